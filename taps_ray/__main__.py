import sys

from taps_ray.cli import main

sys.exit(main())
