// The kernels for the build's target instruction set; always present.
#define PYCOMM_KERNEL_ISA baseline
#define PYCOMM_KERNEL_ISA_NAME "baseline"
#include "kernels/isa_table.inc"
