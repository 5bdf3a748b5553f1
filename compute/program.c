/* program: records a planned graph into one command buffer and replays it. */
#include "program.h"

#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "vk.h"

struct program {
    struct device *dev;
    struct cg_graph *graph;
    struct buf *arena;
    bool owns_arena;
    uint64_t arena_offset, arena_bytes;
    VkCommandPool pool;
    VkCommandBuffer cmd;
    VkFence fence;
    VkQueryPool queries;
    int ndispatch, cap_dispatch;
    int *dispatch_op;   /* op index of each dispatch, for profiles */
    bool profile;
    bool ran;
};

struct enc {
    struct program *prog;
    int op_index;
};

typedef df_status (*encoder)(struct enc *, const struct cg_op *);
static const encoder encoders[CG_OP_COUNT] = {
    [CG_OP_MATMUL] = kern_matmul,
    [CG_OP_CONV2D] = kern_conv2d,
    [CG_OP_GROUPNORM] = kern_groupnorm,
    [CG_OP_LAYERNORM] = kern_layernorm,
    [CG_OP_ATTENTION] = kern_attention,
    [CG_OP_BINARY] = kern_binary,
    [CG_OP_UNARY] = kern_unary,
    [CG_OP_GEGLU] = kern_geglu,
    [CG_OP_UPSAMPLE2X] = kern_upsample2x,
    [CG_OP_CONCAT] = kern_concat,
    [CG_OP_TIMESTEP_EMBED] = kern_timestep_embed,
    [CG_OP_SOFTMAX] = kern_softmax,
    [CG_OP_TRANSPOSE] = kern_transpose,
    [CG_OP_EMBED] = kern_embed,
};

const struct dev_caps *enc_caps(const struct enc *e) { return &e->prog->dev->caps; }

uint64_t enc_addr(const struct enc *e, const struct cg_tensor *t) {
    uint64_t off = 0;
    while (t->kind == CG_VIEW) {
        off += t->view_offset;
        t = t->base;
    }
    if (t->kind == CG_EXTERNAL) return t->ext_buf->address + t->ext_offset + off;
    return e->prog->arena->address + e->prog->arena_offset + t->arena_offset + off;
}

void enc_grid(const struct enc *e, uint64_t groups, uint32_t *gx, uint32_t *gy) {
    uint64_t maxx = e->prog->dev->caps.max_workgroup_count[0];
    if (groups == 0) groups = 1;
    if (groups <= maxx) {
        *gx = (uint32_t)groups;
        *gy = 1;
    } else {
        *gx = (uint32_t)maxx;
        *gy = (uint32_t)((groups + maxx - 1) / maxx);
    }
}

df_status enc_dispatch(struct enc *e, const char *shader, const uint32_t *spec, int nspec,
                       const void *push, uint32_t push_size, uint32_t gx, uint32_t gy, uint32_t gz) {
    struct program *p = e->prog;
    const struct dev_caps *c = &p->dev->caps;
    if (push_size > VK_PUSH_BYTES || push_size % 4)
        return df_error(DF_EINVAL, "%s: push constants of %u bytes", shader, push_size);
    if (gx == 0 || gy == 0 || gz == 0 || gx > c->max_workgroup_count[0] || gy > c->max_workgroup_count[1] ||
        gz > c->max_workgroup_count[2])
        return df_error(DF_EINVAL, "%s: grid %ux%ux%u outside device limits", shader, gx, gy, gz);
    VkPipeline pipe;
    df_status st = vk_pipeline(p->dev, shader, spec, nspec, &pipe);
    if (st != DF_OK) return st;
    if (p->ndispatch == p->cap_dispatch) {
        int cap = p->cap_dispatch ? p->cap_dispatch * 2 : 256;
        int *d = realloc(p->dispatch_op, (size_t)cap * sizeof *d);
        if (!d) return df_error(DF_ENOMEM, "out of memory");
        p->dispatch_op = d;
        p->cap_dispatch = cap;
    }
    p->dispatch_op[p->ndispatch++] = e->op_index;
    uint8_t block[VK_PUSH_BYTES] = {0};
    memcpy(block, push, push_size);
    vkCmdBindPipeline(p->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, pipe);
    vkCmdPushConstants(p->cmd, p->dev->layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, VK_PUSH_BYTES, block);
    vkCmdDispatch(p->cmd, gx, gy, gz);
    /* Every dispatch may read what the previous ones wrote, and the arena
     * reuses memory (write-after-read): a full compute barrier keeps both
     * orderings on GPUs that overlap dispatches. */
    VkMemoryBarrier mb = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
        .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_SHADER_READ_BIT,
        .dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT,
    };
    vkCmdPipelineBarrier(p->cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
                         0, 1, &mb, 0, NULL, 0, NULL);
    if (p->profile)
        vkCmdWriteTimestamp(p->cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, p->queries, (uint32_t)p->ndispatch);
    return DF_OK;
}

static uint32_t count_dispatch_queries(const struct cg_graph *g) {
    /* upper bound used for the query pool: ops emit few dispatches each */
    return (uint32_t)cg_op_count(g) * 4 + 1;
}

static df_status record(struct program *p) {
    VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
    df_status st = vk_check(vkBeginCommandBuffer(p->cmd, &bi), "vkBeginCommandBuffer");
    if (st != DF_OK) return st;
    /* inputs arrive by host writes or staged copies before the submit */
    VkMemoryBarrier in = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
        .srcAccessMask = VK_ACCESS_HOST_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
        .dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT,
    };
    vkCmdPipelineBarrier(p->cmd, VK_PIPELINE_STAGE_HOST_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
                         VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, 0, 1, &in, 0, NULL, 0, NULL);
    if (p->profile) {
        vkCmdResetQueryPool(p->cmd, p->queries, 0, count_dispatch_queries(p->graph));
        vkCmdWriteTimestamp(p->cmd, VK_PIPELINE_STAGE_TOP_OF_PIPE_BIT, p->queries, 0);
    }
    struct enc e = {.prog = p};
    uint32_t max_queries = count_dispatch_queries(p->graph);
    for (int i = 0; i < cg_op_count(p->graph); i++) {
        const struct cg_op *op = cg_op_at(p->graph, i);
        e.op_index = i;
        encoder fn = encoders[op->type];
        if (!fn) return df_error(DF_EUNSUPPORTED, "no kernel for op %s", cg_op_name(op->type));
        if ((st = fn(&e, op)) != DF_OK) return st;
        if (p->profile && (uint32_t)p->ndispatch + 4 > max_queries)
            return df_error(DF_EINVAL, "op %s emitted too many dispatches", cg_op_name(op->type));
    }
    VkMemoryBarrier out = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
        .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT,
        .dstAccessMask = VK_ACCESS_HOST_READ_BIT | VK_ACCESS_TRANSFER_READ_BIT,
    };
    vkCmdPipelineBarrier(p->cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
                         VK_PIPELINE_STAGE_HOST_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT, 0, 1, &out, 0, NULL, 0, NULL);
    return vk_check(vkEndCommandBuffer(p->cmd), "vkEndCommandBuffer");
}

df_status prog_create(struct device *dev, struct cg_graph *g, const struct prog_options *opt,
                      struct program **out) {
    struct prog_options none = {0};
    if (!opt) opt = &none;
    df_status st = cg_status(g);
    if (st != DF_OK) return st;
    struct program *p = calloc(1, sizeof *p);
    if (!p) return df_error(DF_ENOMEM, "out of memory");
    p->dev = dev;
    p->graph = g;
    p->profile = opt->profile && dev->caps.timestamps;
    p->arena_offset = opt->arena_offset;
    if ((st = cg_plan(g, &p->arena_bytes)) != DF_OK) goto fail;
    if (opt->arena) {
        p->arena = opt->arena;
        if (opt->arena_offset % 256 || opt->arena_offset + p->arena_bytes > buf_size(opt->arena)) {
            st = df_error(DF_ENOMEM, "pass needs %llu bytes of activations; the arena holds %llu",
                          (unsigned long long)p->arena_bytes,
                          (unsigned long long)(buf_size(opt->arena) - opt->arena_offset));
            goto fail;
        }
    } else {
        st = buf_create(dev, p->arena_bytes, &p->arena);
        if (st != DF_OK) {
            st = df_error(st, "activation arena of %llu bytes: %s", (unsigned long long)p->arena_bytes,
                          df_errmsg());
            goto fail;
        }
        p->owns_arena = true;
    }
    VkCommandPoolCreateInfo pci = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO, .queueFamilyIndex = dev->queue_family,
    };
    if ((st = vk_check(vkCreateCommandPool(dev->dev, &pci, NULL, &p->pool), "vkCreateCommandPool"))) goto fail;
    VkCommandBufferAllocateInfo cai = {
        .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO, .commandPool = p->pool,
        .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY, .commandBufferCount = 1,
    };
    if ((st = vk_check(vkAllocateCommandBuffers(dev->dev, &cai, &p->cmd), "vkAllocateCommandBuffers"))) goto fail;
    VkFenceCreateInfo fci = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    if ((st = vk_check(vkCreateFence(dev->dev, &fci, NULL, &p->fence), "vkCreateFence"))) goto fail;
    if (p->profile) {
        VkQueryPoolCreateInfo qci = {
            .sType = VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO, .queryType = VK_QUERY_TYPE_TIMESTAMP,
            .queryCount = count_dispatch_queries(g),
        };
        if ((st = vk_check(vkCreateQueryPool(dev->dev, &qci, NULL, &p->queries), "vkCreateQueryPool"))) goto fail;
    }
    if ((st = record(p)) != DF_OK) goto fail;
    *out = p;
    return DF_OK;
fail:
    prog_destroy(p);
    return st;
}

void prog_destroy(struct program *p) {
    if (!p) return;
    VkDevice d = p->dev->dev;
    if (p->queries) vkDestroyQueryPool(d, p->queries, NULL);
    if (p->fence) vkDestroyFence(d, p->fence, NULL);
    if (p->pool) vkDestroyCommandPool(d, p->pool, NULL);
    if (p->owns_arena) buf_destroy(p->arena);
    free(p->dispatch_op);
    free(p);
}

uint64_t prog_arena_bytes(const struct program *p) { return p->arena_bytes; }
struct buf *prog_arena(const struct program *p) { return p->arena; }

static df_status arena_range(struct program *p, const struct cg_tensor *t, uint64_t *offset) {
    uint64_t off = 0;
    while (t->kind == CG_VIEW) {
        off += t->view_offset;
        t = t->base;
    }
    if (t->kind == CG_EXTERNAL)
        return df_error(DF_EINVAL, "tensor %s is external: write its buffer directly", t->name ? t->name : "");
    if (t->dtype != DT_F32) return df_error(DF_EINVAL, "only fp32 arena tensors are host-accessible");
    *offset = p->arena_offset + t->arena_offset + off;
    return DF_OK;
}

df_status prog_write(struct program *p, const struct cg_tensor *t, const float *src) {
    uint64_t off;
    df_status st = arena_range(p, t, &off);
    return st != DF_OK ? st : buf_write(p->arena, off, src, cg_nbytes(t));
}

df_status prog_read(struct program *p, const struct cg_tensor *t, float *dst) {
    uint64_t off;
    df_status st = arena_range(p, t, &off);
    return st != DF_OK ? st : buf_read(p->arena, off, dst, cg_nbytes(t));
}

df_status prog_run(struct program *p) {
    struct device *d = p->dev;
    VkSubmitInfo si = {.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO, .commandBufferCount = 1, .pCommandBuffers = &p->cmd};
    vkResetFences(d->dev, 1, &p->fence);
    pthread_mutex_lock(&d->queue_lock);
    VkResult r = vkQueueSubmit(d->queue, 1, &si, p->fence);
    pthread_mutex_unlock(&d->queue_lock);
    df_status st = vk_check(r, "vkQueueSubmit");
    if (st != DF_OK) return st;
    st = vk_check(vkWaitForFences(d->dev, 1, &p->fence, VK_TRUE, UINT64_MAX), "vkWaitForFences");
    if (st == DF_OK) p->ran = true;
    return st;
}

int prog_profile(const struct program *p, struct prog_timing *out, int max) {
    if (!p->profile || !p->ran) return 0;
    int n = p->ndispatch;
    uint64_t *ts = calloc((size_t)n + 1, sizeof *ts);
    if (!ts) return 0;
    VkResult r = vkGetQueryPoolResults(p->dev->dev, p->queries, 0, (uint32_t)n + 1, (size_t)(n + 1) * sizeof *ts,
                                       ts, sizeof *ts, VK_QUERY_RESULT_64_BIT | VK_QUERY_RESULT_WAIT_BIT);
    if (r != VK_SUCCESS) {
        free(ts);
        return 0;
    }
    for (int i = 0; i < n && i < max; i++) {
        out[i].op = p->dispatch_op[i];
        out[i].kernel = cg_op_name(cg_op_at(p->graph, p->dispatch_op[i])->type);
        out[i].ms = (double)(ts[i + 1] - ts[i]) * p->dev->caps.timestamp_period_ns * 1e-6;
    }
    free(ts);
    return n;
}
