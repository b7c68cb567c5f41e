# The release's bin/ecsbatch, after the shebang that after-install.sh writes: pip's own console
# script imports re (for a Windows suffix), 10 ms of CPU and a megabyte of every job's start.
import sys

from ecsbatch import main

if __name__ == "__main__":
    sys.exit(main())
