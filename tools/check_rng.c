/* check_rng: the seeded-noise cases (torch_randn: torch.randn on the CPU;
 * philox_randn: A1111's "GPU" source). Every out.* tensor is redrawn from a
 * freshly seeded generator and compared bit for bit: a seed must reproduce
 * other tools' images exactly, and a tolerance would hide an off-by-one in
 * the generator's stream position.
 *
 * Tensor names carry the draw: out.<group>.seed<S>.<what>, where <what> is
 *   shape<AxB..>        one call of a fresh generator;
 *   call<k>.<...>       the k-th call (from 0) of one generator;
 *   <ordinal>_<...>     the same with first/second/third... (torch file).
 * A sequence call is checked by replaying the earlier calls of its group and
 * seed first, because the generator's state (torch's cached Box-Muller value,
 * Philox's offset) carries over between calls. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "models/rng.h"

/* Sequence positions spelled as words; longer than any fixture needs. */
static const char *const ordinals[] = {"first", "second", "third", "fourth", "fifth",
                                       "sixth", "seventh", "eighth", "ninth", "tenth"};

/* Where a tensor's draw comes from. index -1 = one call of a fresh
 * generator; otherwise the position within the (group, seed) sequence. */
struct draw {
    const char *group; /* after "out.", not terminated: group_len chars */
    size_t group_len;
    uint64_t seed;
    int index;
};

static bool parse_draw(const char *name, struct draw *d) {
    if (strncmp(name, "out.", 4) != 0) return false;
    d->group = name + 4;
    const char *s = strstr(d->group, ".seed");
    if (!s || s == d->group) return false;
    d->group_len = (size_t)(s - d->group);
    int pos = 0;
    if (sscanf(s, ".seed%" SCNu64 ".%n", &d->seed, &pos) != 1 || pos == 0) return false;
    const char *what = s + pos;
    if (strncmp(what, "shape", 5) == 0) {
        d->index = -1;
        return true;
    }
    int k;
    pos = 0;
    if (sscanf(what, "call%d.%n", &k, &pos) == 1 && pos > 0 && k >= 0) {
        d->index = k;
        return true;
    }
    for (size_t i = 0; i < sizeof ordinals / sizeof ordinals[0]; i++) {
        size_t len = strlen(ordinals[i]);
        if (strncmp(what, ordinals[i], len) == 0 && what[len] == '_') {
            d->index = (int)i;
            return true;
        }
    }
    return false;
}

/* The tensor holding call `index` of the same sequence as `d`, or NULL. */
static const struct st_tensor *find_call(const struct st_file *f, const struct draw *d, int index) {
    for (size_t i = 0; i < st_count(f); i++) {
        struct draw o;
        const struct st_tensor *t = st_at(f, i);
        if (parse_draw(t->name, &o) && o.index == index && o.seed == d->seed && o.group_len == d->group_len &&
            memcmp(o.group, d->group, d->group_len) == 0)
            return t;
    }
    return NULL;
}

/* Running verdict over all tensors of the case. */
struct tally {
    int tensors;
    int64_t floats, differ;
    double max_abs;
    char first[256]; /* the first mismatch, for the detail line */
};

/* Compares bits (not values: -0.0 vs 0.0 or a NaN payload would count). */
static df_status compare_bits(struct check_case *c, const struct st_tensor *t, const float *got,
                              struct tally *ty) {
    float *want;
    int64_t n;
    df_status st = check_tensor(c, t->name, &want, &n);
    if (st != DF_OK) return st;
    int64_t bad = 0, first = 0;
    for (int64_t i = 0; i < n; i++) {
        if (memcmp(&got[i], &want[i], sizeof(float)) == 0) continue;
        if (!bad++) first = i;
        double d = fabs((double)got[i] - (double)want[i]);
        if (isnan(d)) d = INFINITY; /* a NaN on either side is the worst */
        if (d > ty->max_abs) ty->max_abs = d;
    }
    if (bad && !ty->differ)
        snprintf(ty->first, sizeof ty->first, "%s: %lld of %lld differ, first at %lld got %.9g want %.9g",
                 t->name, (long long)bad, (long long)n, (long long)first, (double)got[first],
                 (double)want[first]);
    ty->differ += bad;
    ty->floats += n;
    ty->tensors++;
    free(want);
    return DF_OK;
}

/* Draws calls 0..d->index (or the single call) from one generator and
 * compares the last one with `t`. */
static df_status check_draw(struct check_case *c, enum rng_kind kind, const struct st_tensor *t,
                            const struct draw *d, struct tally *ty) {
    struct rng *r = NULL;
    float *buf = NULL;
    df_status st = rng_create(kind, d->seed, &r);
    int last = d->index < 0 ? 0 : d->index;
    for (int k = 0; st == DF_OK && k <= last; k++) {
        const struct st_tensor *call = d->index < 0 || k == last ? t : find_call(c->file, d, k);
        if (!call) {
            st = df_error(DF_EFORMAT, "%s: sequence call %d is missing", t->name, k);
            break;
        }
        float *nb = realloc(buf, (size_t)(call->numel ? call->numel : 1) * sizeof *buf);
        if (!nb) {
            st = df_error(DF_ENOMEM, "out of memory");
            break;
        }
        buf = nb;
        /* one rng_randn per tensor: torch picks its algorithm by the call's
         * element count, so splitting a call would change the values */
        st = rng_randn(r, buf, (size_t)call->numel);
    }
    if (st == DF_OK) st = compare_bits(c, t, buf, ty);
    free(buf);
    rng_destroy(r);
    return st;
}

df_status check_rng(struct check_ctx *ctx, struct check_case *c) {
    (void)ctx; /* host-only: --fp16 and the device do not apply */
    const char *component = json_string_value(json_object_get(c->json, "component"));
    enum rng_kind kind;
    if (component && strncmp(component, "torch.randn", 11) == 0) kind = RNG_TORCH_CPU;
    else if (component && strncmp(component, "A1111 GPU seed noise", 20) == 0) kind = RNG_PHILOX;
    else return df_error(DF_EUNSUPPORTED, "no generator for component %s", component ? component : "?");

    struct tally ty = {0};
    for (size_t i = 0; i < st_count(c->file); i++) {
        const struct st_tensor *t = st_at(c->file, i);
        if (strncmp(t->name, "out.", 4) != 0) continue;
        struct draw d;
        if (!parse_draw(t->name, &d))
            return df_error(DF_EFORMAT, "case %s: cannot tell the draw of tensor %s", c->name, t->name);
        df_status st = check_draw(c, kind, t, &d, &ty);
        if (st != DF_OK) return st;
    }
    if (!ty.tensors) return df_error(DF_EFORMAT, "case %s has no out.* tensors", c->name);

    /* every seed the manifest lists must have been exercised, so a file
     * that lost tensors does not pass quietly */
    size_t i;
    const json_t *seed;
    json_array_foreach(json_object_get(c->json, "seeds"), i, seed) {
        bool seen = false;
        for (size_t j = 0; j < st_count(c->file) && !seen; j++) {
            struct draw d;
            seen = parse_draw(st_at(c->file, j)->name, &d) && json_is_integer(seed) &&
                   d.seed == (uint64_t)json_integer_value(seed);
        }
        if (!seen) {
            c->failed = true;
            snprintf(c->detail, sizeof c->detail, "manifest seed %lld has no tensor",
                     (long long)json_integer_value(seed));
            return DF_OK;
        }
    }

    c->max_err = ty.max_abs;
    if (ty.differ) {
        c->failed = true;
        snprintf(c->detail, sizeof c->detail, "%lld of %lld floats differ in bits, max abs %.3g; %s",
                 (long long)ty.differ, (long long)ty.floats, ty.max_abs, ty.first);
    } else {
        snprintf(c->detail, sizeof c->detail, "%d tensors, %lld floats, all bits equal", ty.tensors,
                 (long long)ty.floats);
    }
    return DF_OK;
}
