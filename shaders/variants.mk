# GEMM / conv2d: fp16 weights through 16-bit storage (when the device has it)
VARIANT_matmul_s16 = shaders/matmul.comp -DSTORAGE16=1
VARIANT_conv2d_s16 = shaders/conv2d.comp -DSTORAGE16=1
