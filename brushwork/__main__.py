"""`python -m brushwork ...`, the same as the `brushwork` command (and what `accelerate launch -m brushwork` runs)."""

import sys

from brushwork.cli import main

sys.exit(main())
