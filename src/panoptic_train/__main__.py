import sys

from panoptic_train.cli import main

sys.exit(main())
