#!/bin/sh
# Create the unprivileged user `ckpt` (UID/GID given) and the shared-volume mount point /data it owns.
# Ubuntu-based NVIDIA images already have an account with UID 1000 (`ubuntu`); it is renamed rather than
# duplicated, so files on a host directory mounted at /data keep one owner.
set -eu

uid=${1:?usage: create-user.sh UID GID}
gid=${2:?usage: create-user.sh UID GID}
if [ "$uid" -eq 0 ] || [ "$gid" -eq 0 ]; then
    echo "create-user.sh: the tools must not run as root (UID/GID 0 given)" >&2
    exit 2
fi

existing_group=$(getent group "$gid" | cut -d: -f1 || true)
if [ -n "$existing_group" ]; then
    [ "$existing_group" = ckpt ] || groupmod --new-name ckpt "$existing_group"
else
    groupadd --gid "$gid" ckpt
fi

existing_user=$(getent passwd "$uid" | cut -d: -f1 || true)
if [ -n "$existing_user" ]; then
    usermod --login ckpt --gid "$gid" --home /home/ckpt --move-home --shell /bin/sh "$existing_user"
else
    useradd --uid "$uid" --gid "$gid" --create-home --home-dir /home/ckpt --shell /bin/sh ckpt
fi

install -d -o "$uid" -g "$gid" -m 0755 /data
