"""`python -m mobile_sam` runs the `mobile-sam` command."""
import sys

from mobile_sam.cli import main

sys.exit(main())
