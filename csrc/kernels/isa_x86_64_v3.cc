// The kernels for x86-64-v3 (AVX2, F16C, FMA, BMI); CMake compiles this file with
// -march=x86-64-v3 -ffp-contract=off when the compiler accepts it.
#define PYCOMM_KERNEL_ISA x86_64_v3
#define PYCOMM_KERNEL_ISA_NAME "x86-64-v3"
#include "kernels/isa_table.inc"
