// The kernels for x86-64-v4 (AVX-512 F/BW/DQ/VL on top of v3); CMake compiles this file with
// -march=x86-64-v4 when the compiler accepts it.
#define PYCOMM_KERNEL_ISA x86_64_v4
#define PYCOMM_KERNEL_ISA_NAME "x86-64-v4"
#include "kernels/isa_table.inc"
