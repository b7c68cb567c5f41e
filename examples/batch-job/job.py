"""An example batch job: logs what it was asked to do and exits with a code the scheduler judges.

TARGET_DATE picks the day to process (default: today). JOB_EXIT_CODE makes it fail on purpose,
to try the alerting path. On SIGTERM (StopTask, or ecsbatch stopping it) it exits 143 at once.
"""

import datetime
import os
import signal
import sys
import time


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    target = os.environ.get("TARGET_DATE") or datetime.date.today().isoformat()
    print(f"batch job: processing {target} in stage {os.environ.get('STAGE', '-')}", flush=True)
    time.sleep(float(os.environ.get("JOB_SECONDS", "1")))
    code = int(os.environ.get("JOB_EXIT_CODE", "0"))
    print(f"batch job: done, exit {code}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
