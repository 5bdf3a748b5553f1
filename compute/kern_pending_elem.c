/* TEMPORARY placeholder so the tree links; deleted when the real kernels land. */
#include "kernels.h"
df_status kern_geglu(struct enc *e, const struct cg_op *op) { (void)e; (void)op; return df_error(DF_EUNSUPPORTED, "kern_geglu pending"); }
df_status kern_upsample2x(struct enc *e, const struct cg_op *op) { (void)e; (void)op; return df_error(DF_EUNSUPPORTED, "kern_upsample2x pending"); }
df_status kern_concat(struct enc *e, const struct cg_op *op) { (void)e; (void)op; return df_error(DF_EUNSUPPORTED, "kern_concat pending"); }
df_status kern_timestep_embed(struct enc *e, const struct cg_op *op) { (void)e; (void)op; return df_error(DF_EUNSUPPORTED, "kern_timestep_embed pending"); }
df_status kern_transpose(struct enc *e, const struct cg_op *op) { (void)e; (void)op; return df_error(DF_EUNSUPPORTED, "kern_transpose pending"); }
