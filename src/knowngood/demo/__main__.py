"""`python -m knowngood.demo`: see knowngood.demo."""

import sys

from knowngood.demo import main

sys.exit(main())
