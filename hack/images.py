#!/usr/bin/env python3
"""OCI image archives of quiesce, without a Docker engine (standard library only).

    images.py finish IN.tar OUT.tar --user UID:GID --label KEY=VALUE ...
        Takes the one-image OCI layout that the cluster kit's make-image.sh
        writes (the binary at /NAME as the entrypoint, plus /tmp) and writes
        it again with the image's user and labels set in its config, the
        digests recomputed. The result is an OCI archive to push
        (skopeo copy oci-archive:OUT.tar docker://...) or import.

    images.py check DOCKERFILE ARCHIVE...
        Proves that each archive has the entrypoint and user of the
        Dockerfile's stage of the same name (quiesce-operator.oci.tar and
        `FROM ... AS operator`), that the entrypoint is the file the stage
        copies in, and that the stage's base has no shell or libc to rely on
        (distroless static or scratch). Exits 1 with what differs.
"""
import argparse
import hashlib
import io
import json
import re
import sys
import tarfile

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
BASES = ("scratch", "gcr.io/distroless/static")


def read_archive(path):
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def blob_name(digest):
    return "blobs/sha256/" + digest.split(":", 1)[1]


def sole_image(files, path):
    index = json.loads(files["index.json"])
    manifests = index.get("manifests", [])
    digests = {m["digest"] for m in manifests}
    if len(digests) != 1:
        sys.exit(f"{path}: expected one image, found {len(digests)}")
    manifest = json.loads(files[blob_name(manifests[0]["digest"])])
    config = json.loads(files[blob_name(manifest["config"]["digest"])])
    return index, manifest, config


def add_blob(files, data, media_type):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    files[blob_name(digest)] = data
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def write_archive(files, path):
    # Reproducible, like make-image.sh's: sorted, owner 0, mtime 0.
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(files[name]))


def canonical(document):
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def finish(args):
    files = read_archive(args.input)
    index, manifest, config = sole_image(files, args.input)
    old = {blob_name(manifest["config"]["digest"]), blob_name(index["manifests"][0]["digest"])}
    for name in old:
        del files[name]
    config["config"]["User"] = args.user
    labels = dict(label.split("=", 1) for label in args.label)
    config["config"]["Labels"] = {**config["config"].get("Labels", {}), **labels}
    manifest["config"] = add_blob(files, canonical(config), CONFIG)
    descriptor = add_blob(files, canonical(manifest), MANIFEST)
    for entry in index["manifests"]:
        entry.update(digest=descriptor["digest"], size=descriptor["size"])
    files["index.json"] = canonical(index)
    write_archive(files, args.output)
    print(f"{args.output}: {descriptor['digest']}, user {args.user}, "
          f"entrypoint {config['config']['Entrypoint']}")


def dockerfile_stages(path):
    """{stage: {"base", "entrypoint", "user", "copies"}} of a Dockerfile."""
    stages, current = {}, None
    with open(path) as f:
        text = re.sub(r"\\\n", " ", f.read())
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        instruction = words[0].upper()
        if instruction == "FROM":
            name = words[3] if len(words) >= 4 and words[2].upper() == "AS" else words[1]
            current = stages[name] = {"base": words[1], "entrypoint": None, "user": None,
                                      "copies": []}
        elif instruction == "ENTRYPOINT":
            current["entrypoint"] = json.loads(line.split(None, 1)[1])
        elif instruction == "USER":
            current["user"] = words[1]
        elif instruction == "COPY":
            current["copies"].append(words[-1])
    return stages


def check(args):
    stages = dockerfile_stages(args.dockerfile)
    problems = []
    for path in args.archives:
        name = re.sub(r"^quiesce-|\.oci\.tar$", "", path.rsplit("/", 1)[-1])
        stage = stages.get(name)
        if stage is None:
            problems.append(f"{path}: no stage {name!r} in {args.dockerfile}")
            continue
        before = len(problems)
        _, _, config = sole_image(read_archive(path), path)
        image = config["config"]
        found = {"entrypoint": image.get("Entrypoint"), "user": image.get("User")}
        for key, value in found.items():
            if value != stage[key]:
                problems.append(f"{path}: {key} {value!r}, but the Dockerfile's stage "
                                f"{name} has {stage[key]!r}")
        if stage["entrypoint"] and stage["entrypoint"][0] not in stage["copies"]:
            problems.append(f"stage {name}: the entrypoint {stage['entrypoint'][0]} is not "
                            f"what it copies in ({stage['copies']})")
        if not stage["base"].startswith(BASES):
            problems.append(f"stage {name}: base {stage['base']} is neither scratch nor "
                            "distroless static")
        if not stage["user"] or stage["user"].split(":")[0] in ("0", "root"):
            problems.append(f"stage {name}: runs as root")
        if len(problems) == before:
            print(f"{path}: entrypoint {found['entrypoint']}, user {found['user']}, as in "
                  f"the Dockerfile's stage {name}")
    for problem in problems:
        print(f"images.py check: {problem}", file=sys.stderr)
    return 1 if problems else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fin = commands.add_parser("finish", help="set the user and labels of an OCI archive")
    fin.add_argument("input")
    fin.add_argument("output")
    fin.add_argument("--user", required=True)
    fin.add_argument("--label", action="append", default=[])
    chk = commands.add_parser("check", help="compare OCI archives with the Dockerfile")
    chk.add_argument("dockerfile")
    chk.add_argument("archives", nargs="+")
    args = parser.parse_args()
    if args.command == "finish":
        finish(args)
        return 0
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
