/* TEMPORARY placeholder so the tree links; deleted when the real kernels land. */
#include "kernels.h"
df_status kern_matmul(struct enc *e, const struct cg_op *op) { (void)e; (void)op; return df_error(DF_EUNSUPPORTED, "kern_matmul pending"); }
df_status kern_conv2d(struct enc *e, const struct cg_op *op) { (void)e; (void)op; return df_error(DF_EUNSUPPORTED, "kern_conv2d pending"); }
