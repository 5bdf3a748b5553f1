/* kernels: turn one graph op into dispatches. Internal to compute/.
 *
 * Each kern_<op> picks a shader variant from the device's capabilities,
 * fills the push constants (tensor device addresses + sizes) and emits one
 * or more dispatches through enc_dispatch. Encoders see no Vulkan types, so
 * they are plain C that a second backend could mirror. */
#ifndef DF_KERNELS_H
#define DF_KERNELS_H

#include <stdint.h>

#include "device.h"
#include "graph.h"

struct enc;

/* Appends a dispatch of `shader` (a name from shaders/, or a variant) with
 * specialization constants spec[0..nspec) as constant_id 0..nspec-1 (32-bit
 * each) and a push-constant block of at most 128 bytes. */
df_status enc_dispatch(struct enc *e, const char *shader, const uint32_t *spec, int nspec,
                       const void *push, uint32_t push_size, uint32_t gx, uint32_t gy, uint32_t gz);
/* Device address of a tensor's first element (views resolved). */
uint64_t enc_addr(const struct enc *e, const struct cg_tensor *t);
const struct dev_caps *enc_caps(const struct enc *e);
/* Splits `groups` workgroups into a 2-D grid within the device's limits;
 * shaders recover the flat index as gl_WorkGroupID.x + gl_WorkGroupID.y *
 * gl_NumWorkGroups.x and skip indices past the end. */
void enc_grid(const struct enc *e, uint64_t groups, uint32_t *gx, uint32_t *gy);

df_status kern_matmul(struct enc *e, const struct cg_op *op);
df_status kern_conv2d(struct enc *e, const struct cg_op *op);
df_status kern_groupnorm(struct enc *e, const struct cg_op *op);
df_status kern_layernorm(struct enc *e, const struct cg_op *op);
df_status kern_softmax(struct enc *e, const struct cg_op *op);
df_status kern_attention(struct enc *e, const struct cg_op *op);
df_status kern_binary(struct enc *e, const struct cg_op *op);
df_status kern_unary(struct enc *e, const struct cg_op *op);
df_status kern_geglu(struct enc *e, const struct cg_op *op);
df_status kern_upsample2x(struct enc *e, const struct cg_op *op);
df_status kern_concat(struct enc *e, const struct cg_op *op);
df_status kern_timestep_embed(struct enc *e, const struct cg_op *op);
df_status kern_transpose(struct enc *e, const struct cg_op *op);
df_status kern_embed(struct enc *e, const struct cg_op *op);

#endif
