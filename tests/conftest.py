"""Test set-up: run Triton kernels in the CPU interpreter (KERNELS.md).

``TRITON_INTERPRET`` is read when the kernel modules are decorated, so it is set
here, before any test imports the package.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
