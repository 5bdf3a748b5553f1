# GEMM / conv2d: fp16 weights through 16-bit storage (when the device has it)
VARIANT_matmul_s16 = shaders/matmul.comp -DSTORAGE16=1
VARIANT_conv2d_s16 = shaders/conv2d.comp -DSTORAGE16=1
# GEMM / conv2d without shared memory, for CPU drivers (subgroup shuffles)
VARIANT_matmul_sg = shaders/matmul.comp -DSUBGROUP=1
VARIANT_conv2d_sg = shaders/conv2d.comp -DSUBGROUP=1
# norms / softmax: shared-memory tree reductions, for devices without subgroup arithmetic
VARIANT_groupnorm_nosg = shaders/groupnorm.comp -DNO_SUBGROUP=1
VARIANT_layernorm_nosg = shaders/layernorm.comp -DNO_SUBGROUP=1
VARIANT_softmax_nosg = shaders/softmax.comp -DNO_SUBGROUP=1
# attention: the CPU-driver loop for small heads (subgroup shuffles, no shared memory)
VARIANT_attention_sg = shaders/attention.comp -DATTN_SG=1
# attention, wide heads on GPUs: invocations split the head dim; scores summed
# by subgroupAdd, or in shared memory (devices without subgroup arithmetic)
VARIANT_attention_wide = shaders/attention.comp -DATTN_WIDE=1
VARIANT_attention_wide_smem = shaders/attention.comp -DATTN_WIDE_SMEM=1
# attention, CPU drivers from head dim 32 on: scores as a GEMM by shuffles
VARIANT_attention_wide_sg = shaders/attention.comp -DATTN_WIDE_SG=1
# GEMM / conv2d on the matrix units (NV cooperative matrices, fp16 operands,
# fp32 sums), for devices whose start-up self-test passed
# (_cms: 64 x 64 tiles for small grids; the convolution prefetches)
VARIANT_matmul_cm = shaders/matmul.comp -DSTORAGE16=1 -DCOOP=1
VARIANT_conv2d_cm = shaders/conv2d.comp -DSTORAGE16=1 -DCOOP=1 -DPREFETCH=1
VARIANT_matmul_cms = shaders/matmul.comp -DSTORAGE16=1 -DCOOP=1 -DCOOP_SMALL=1
VARIANT_conv2d_cms = shaders/conv2d.comp -DSTORAGE16=1 -DCOOP=1 -DPREFETCH=1 -DCOOP_SMALL=1
# K slices of 64 instead of 32: the matmuls' choice (faster there on the H200,
# slower for the convolutions); `bench --matrix-bk 32|64` forces one for all
VARIANT_matmul_cm64 = shaders/matmul.comp -DSTORAGE16=1 -DCOOP=1 -DCOOP_BK64=1
VARIANT_conv2d_cm64 = shaders/conv2d.comp -DSTORAGE16=1 -DCOOP=1 -DPREFETCH=1 -DCOOP_BK64=1
VARIANT_matmul_cms64 = shaders/matmul.comp -DSTORAGE16=1 -DCOOP=1 -DCOOP_SMALL=1 -DCOOP_BK64=1
VARIANT_conv2d_cms64 = shaders/conv2d.comp -DSTORAGE16=1 -DCOOP=1 -DPREFETCH=1 -DCOOP_SMALL=1 -DCOOP_BK64=1
# deliberately wrong (A's last columns dropped), tiled and on the matrix
# units: tests show the start-up self-test rejects them
VARIANT_matmul_bad = shaders/matmul.comp -DTEST_BROKEN=1
VARIANT_matmul_cmbad = shaders/matmul.comp -DSTORAGE16=1 -DCOOP=1 -DTEST_BROKEN=1
VARIANT_matmul_cmsbad = shaders/matmul.comp -DSTORAGE16=1 -DCOOP=1 -DCOOP_SMALL=1 -DTEST_BROKEN=1
# attention on the matrix units (fp16 operands, fp32 sums; after the self-test)
VARIANT_attention_cm = shaders/attention.comp -DATTN_COOP=1
