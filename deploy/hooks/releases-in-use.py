"""Prints each release directory (an argument) that a running process still uses, one a line.

A process uses a release when its command line, its executable or a file it has mapped (the
venv's compiled modules, such as PyYAML's) lies under the release. Where processes are hidden
(/proc mounted with hidepid, for a user other than root, or an unreadable command line), nothing
can be known: every release is printed, so that the caller keeps them all. Runs on the server's python3 (3.9+).
"""

import os
import sys


def main(releases):
    roots = [os.path.realpath(r).rstrip("/") + "/" for r in releases]
    used = set()
    if os.geteuid() != 0 and hidepid():
        return releases
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == str(os.getpid()):
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                paths = handle.read().decode("utf-8", "replace").split("\0")
        except (FileNotFoundError, ProcessLookupError):
            continue  # gone
        except PermissionError:
            return releases  # hidden: nothing can be known
        # The executable and the mapped files need ptrace access, which a container may deny even
        # to root; the command line already names the release's venv for every job that ecsbatch's
        # own scripts started (their shebang is the release's real path).
        try:
            paths.append(os.readlink(f"/proc/{pid}/exe"))
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as handle:
                paths += [line.split(None, 5)[-1].strip() for line in handle if "/" in line]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
        for release, root in zip(releases, roots):
            if any(path.startswith(root) for path in paths):
                used.add(release)
    return [r for r in releases if r in used]


def hidepid():
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            fields = line.split(" - ", 1)
            if len(fields) == 2 and fields[1].startswith("proc ") and "hidepid=" in fields[1]:
                option = fields[1].split("hidepid=", 1)[1].split(",")[0].split()[0]
                if option not in ("0", "off"):
                    return True
    return False


if __name__ == "__main__":
    for release in main(sys.argv[1:]):
        print(release)
