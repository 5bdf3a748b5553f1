/* load: a small HTTP load client for `make load`. C clients on their own
 * threads send requests for a while (Connection: close, one per request)
 * and it reports requests/s and latency percentiles.
 *   load PORT PATH SECONDS CLIENTS [JSON-BODY]   (POST when a body is given) */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SAMPLES 1000000

static int port;
static const char *path, *body;
static double deadline;
static double *latencies;
static long nlat, errors;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* One request; returns the HTTP status or -1. */
static int request(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        close(fd);
        return -1;
    }
    char req[4096];
    int n = body ? snprintf(req, sizeof req,
                            "POST %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                            "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                            path, strlen(body), body)
                 : snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", path);
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    char buf[65536], first[16] = "";
    ssize_t got;
    size_t total = 0;
    while ((got = read(fd, buf, sizeof buf)) > 0) {
        if (total == 0) memcpy(first, buf, got < 15 ? (size_t)got : 15);
        total += (size_t)got;
    }
    close(fd);
    int status = -1;
    sscanf(first, "HTTP/1.%*d %d", &status);
    return status;
}

static void *client(void *arg) {
    (void)arg;
    while (now() < deadline) {
        double t = now();
        int status = request();
        double dt = now() - t;
        pthread_mutex_lock(&lock);
        if (status != 200) errors++;
        else if (nlat < MAX_SAMPLES) latencies[nlat++] = dt;
        pthread_mutex_unlock(&lock);
    }
    return NULL;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: load PORT PATH SECONDS CLIENTS [JSON-BODY]\n");
        return 2;
    }
    port = atoi(argv[1]);
    path = argv[2];
    double seconds = atof(argv[3]);
    int clients = atoi(argv[4]);
    body = argc > 5 ? argv[5] : NULL;
    latencies = malloc(MAX_SAMPLES * sizeof *latencies);
    if (!latencies || clients < 1 || clients > 256) return 2;
    pthread_t t[256];
    double start = now();
    deadline = start + seconds;
    for (int i = 0; i < clients; i++) pthread_create(&t[i], NULL, client, NULL);
    for (int i = 0; i < clients; i++) pthread_join(t[i], NULL);
    double elapsed = now() - start;
    qsort(latencies, (size_t)nlat, sizeof *latencies, cmp);
    printf("%s %s, %d clients, %.0f s: %ld ok (%.1f req/s), %ld errors", body ? "POST" : "GET", path, clients,
           elapsed, nlat, (double)nlat / elapsed, errors);
    if (nlat)
        printf(", latency p50 %.1f ms, p90 %.1f ms, p99 %.1f ms, max %.1f ms", 1e3 * latencies[nlat / 2],
               1e3 * latencies[nlat * 9 / 10], 1e3 * latencies[nlat * 99 / 100], 1e3 * latencies[nlat - 1]);
    printf("\n");
    free(latencies);
    return errors && !nlat ? 1 : 0;
}
