"""`python -m forgetlab`: the command line, also as a launcher's module
(`accelerate launch -m forgetlab run CONFIG`, torchrun's `-m forgetlab`)."""

import sys

from forgetlab.cli import main

sys.exit(main())
