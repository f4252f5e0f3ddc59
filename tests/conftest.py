import os

import torch

# The Triton kernels run on CPU tensors through the interpreter; it must be
# switched on before rubikops.triton_kernels is imported.  On a GPU machine the real
# compiler is used instead.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
