# GEMM / conv2d: fp16 weights through 16-bit storage (when the device has it)
VARIANT_matmul_s16 = shaders/matmul.comp -DSTORAGE16=1
VARIANT_conv2d_s16 = shaders/conv2d.comp -DSTORAGE16=1
# norms / softmax: shared-memory tree reductions, for devices without subgroup arithmetic
VARIANT_groupnorm_nosg = shaders/groupnorm.comp -DNO_SUBGROUP=1
VARIANT_layernorm_nosg = shaders/layernorm.comp -DNO_SUBGROUP=1
VARIANT_softmax_nosg = shaders/softmax.comp -DNO_SUBGROUP=1
