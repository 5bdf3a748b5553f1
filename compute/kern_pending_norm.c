/* TEMPORARY placeholder so the tree links; deleted when the real kernels land. */
#include "kernels.h"
df_status kern_groupnorm(struct enc *e, const struct cg_op *op) { (void)e; (void)op; return df_error(DF_EUNSUPPORTED, "kern_groupnorm pending"); }
df_status kern_layernorm(struct enc *e, const struct cg_op *op) { (void)e; (void)op; return df_error(DF_EUNSUPPORTED, "kern_layernorm pending"); }
df_status kern_softmax(struct enc *e, const struct cg_op *op) { (void)e; (void)op; return df_error(DF_EUNSUPPORTED, "kern_softmax pending"); }
df_status kern_attention(struct enc *e, const struct cg_op *op) { (void)e; (void)op; return df_error(DF_EUNSUPPORTED, "kern_attention pending"); }
