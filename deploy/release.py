"""The build's helpers for the release (run by the buildspec's Python, which has PyYAML).

    python deploy/release.py requirements WHEEL          the wheel's runtime requirements, one a line
    python deploy/release.py placeholders FILE...         the ${NAME}s that YAML files name, one a line
    python deploy/release.py check-lock WHEEL LOCK        the lock was resolved for exactly those
    python deploy/release.py stamp-lock WHEEL LOCK HEADER  write the fingerprint line into a new lock
    python deploy/release.py register-file SRC DEST       register-task.yaml, its image pinned by digest
    python deploy/release.py escape-run-file SRC DEST     a rendered run-task.yaml that `run` leaves as is
    python deploy/release.py render-appspec SRC DEST APP  appspec.yml for one application

Each failure is one line on stderr and exit status 1.
"""

from __future__ import annotations

import hashlib
import re
import sys
import zipfile
from email.parser import Parser

FINGERPRINT_PREFIX = "# requires-sha256: "
REFRESH = "deploy/refresh-locks.sh"
APPLICATION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class Failure(Exception):
    pass


def requirements(wheel: str) -> list:
    """The wheel's Requires-Dist lines without extras: what the batch server must install."""
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
        if len(names) != 1:
            raise Failure(f"{wheel}: no single .dist-info/METADATA")
        metadata = Parser().parsestr(archive.read(names[0]).decode("utf-8"))
    found = metadata.get_all("Requires-Dist") or []
    return sorted(line.strip() for line in found if "extra ==" not in line.replace("extra==", "extra =="))


def placeholders(*paths: str) -> list:
    """The names of every `${NAME}` placeholder in the files' values, as ecsbatch reads them
    (`$${` is a literal; comments name none)."""
    names = set()

    def walk(value) -> None:
        if isinstance(value, str):
            names.update(m.group(1) for m in re.finditer(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}", value) if m.group(1))
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for path in paths:
        walk(load_yaml(path))
    return sorted(names)


def fingerprint(wheel: str) -> str:
    return hashlib.sha256("\n".join(requirements(wheel)).encode("utf-8")).hexdigest()


def check_lock(wheel: str, lock: str) -> None:
    try:
        with open(lock, encoding="utf-8") as handle:
            stamped = [line[len(FINGERPRINT_PREFIX):].strip() for line in handle if line.startswith(FINGERPRINT_PREFIX)]
    except FileNotFoundError:
        raise Failure(f"no lock {lock} for this target: add the target to {REFRESH}, run it, and commit the lock")
    if stamped != [fingerprint(wheel)]:
        raise Failure(f"{lock} was resolved for other dependencies than pyproject.toml's "
                      f"({'; '.join(requirements(wheel))}): run {REFRESH} and commit the locks")


def stamp_lock(wheel: str, lock: str, header: str) -> None:
    with open(lock, encoding="utf-8") as handle:
        body = handle.read()
    with open(lock, "w", encoding="utf-8") as handle:
        handle.write(f"{header}\n{FINGERPRINT_PREFIX}{fingerprint(wheel)}\n{body}")


def load_yaml(path: str):
    import yaml

    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def dump_yaml(data, path: str, header: str) -> None:
    import yaml

    with open(path, "w", encoding="utf-8") as handle:
        handle.write(header)
        yaml.safe_dump(data, handle, sort_keys=False, allow_unicode=True, default_flow_style=False)


def register_file(source: str, destination: str) -> None:
    """Every container image that ends in `:${IMAGE_TAG}` is registered by the pushed image's
    manifest digest instead (`repo@${IMAGE_DIGEST}`), so that a re-pushed tag can never change what
    a revision runs; the tag stays readable as the task definition's tag `image-tag`."""
    request = load_yaml(source)
    pinned = 0
    for container in request.get("containerDefinitions") or []:
        image = container.get("image", "")
        if isinstance(image, str) and image.endswith(":${IMAGE_TAG}"):
            container["image"] = image[: -len(":${IMAGE_TAG}")] + "@${IMAGE_DIGEST}"
            pinned += 1
    if not pinned:
        raise Failure(f"{source}: no container image ends in :${{IMAGE_TAG}}, so none can be pinned to the pushed digest")
    tags = [t for t in request.get("tags") or [] if t.get("key") != "image-tag"]
    request["tags"] = tags + [{"key": "image-tag", "value": "${IMAGE_TAG}"}]
    dump_yaml(request, destination, f"# Made by the build from {source}: images pinned to the pushed digest.\n")


def escape(value):
    """`run` substitutes `${NAME}` and turns `$${` into `${`; escaping every `${` gives back this value."""
    if isinstance(value, str):
        return value.replace("${", "$${")
    if isinstance(value, dict):
        return {key: escape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [escape(item) for item in value]
    return value


def escape_run_file(source: str, destination: str, header: str) -> None:
    dump_yaml(escape(load_yaml(source)), destination, header)


def render_appspec(source: str, destination: str, application: str) -> None:
    if not APPLICATION_PATTERN.fullmatch(application):
        raise Failure(f"APPLICATION_NAME {application!r} cannot name a directory: use 1-100 of A-Z a-z 0-9 . _ -, "
                      "starting with a letter or digit")
    with open(source, encoding="utf-8") as handle:
        text = handle.read()
    text = text.replace("${APPLICATION_NAME}", application)
    if "${" in text:
        raise Failure(f"{source}: a placeholder other than ${{APPLICATION_NAME}} is left")
    with open(destination, "w", encoding="utf-8") as handle:
        handle.write(text)


def main(argv: list) -> int:
    commands = {
        "requirements": lambda wheel: print("\n".join(requirements(wheel))),
        "fingerprint": lambda wheel: print(fingerprint(wheel)),
        "placeholders": lambda *paths: print("\n".join(placeholders(*paths))),
        "check-lock": check_lock,
        "stamp-lock": stamp_lock,
        "register-file": register_file,
        "escape-run-file": escape_run_file,
        "render-appspec": render_appspec,
    }
    if not argv or argv[0] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        commands[argv[0]](*argv[1:])
    except Failure as exc:
        print(f"release: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
