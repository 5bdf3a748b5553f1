/* serve: `diffusiond serve`, the daemon's life cycle.
 *
 * Start: the HTTP server binds first (so /health answers and /ready says
 * "loading" while models load), then the Vulkan devices open, every model
 * loads on every device, the workers start, /ready turns 200 and systemd is
 * told READY=1. Stop (SIGTERM/SIGINT): STOPPING=1, API requests (new
 * connections too) get 503 at once, queued jobs are cancelled (state
 * "cancelled", code "shutdown"), running ones get shutdown_grace_s to
 * finish, waiting clients receive their answers, exit 0.
 *
 * serve_create/serve_stop/serve_destroy run the same daemon inside another
 * program (the tests); serve_main adds signals and sd_notify around them. */
#ifndef DF_SERVE_H
#define DF_SERVE_H

#include "../common/status.h"
#include "config.h"

struct server;

/* `cfg` must outlive the server. */
df_status serve_create(const struct config *cfg, struct server **out);
int serve_port(const struct server *s);
/* The drain SIGTERM starts; returns when it is over. Idempotent. */
void serve_stop(struct server *s);
void serve_destroy(struct server *s);
/* From another thread during serve_stop (or before it): ends the grace
 * period now; running jobs are cancelled at their next step. */
void serve_cut_grace(struct server *s);

/* The sub-command: argv[0] is "serve". SIGTERM/SIGINT stop it (a second
 * one during the grace period cancels the running jobs); SIGHUP is logged
 * and ignored. Exit status: 0 after a clean stop, 1 when start-up failed or
 * a second signal cancelled running jobs, 2 for a bad command line. */
int serve_main(int argc, char **argv);

#endif
