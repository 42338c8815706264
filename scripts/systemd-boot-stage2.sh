#!/usr/bin/env bash
# Stage two of scripts/systemd-boot-test.sh: runs as PID 1 of fresh pid, mount, uts, ipc
# and cgroup namespaces (unshare --fork --mount-proc), prepares a throw-away root and
# becomes Debian's systemd.
#
# Usage: systemd-boot-stage2.sh DISK TARGET [ROOT]
#   DISK    a tmpfs directory holding the overlay upper dirs (the machine's "disk": what
#           one boot writes to /etc, /var and /usr, the next boot sees again)
#   TARGET  the unit to boot (written into /etc/systemd/system by stage one)
#   ROOT    another Debian tree to boot (e.g. a Debian 11 rootfs from field-rootfs.sh):
#           the whole tree is the overlay's lower dir, and we pivot_root into it. Without
#           it the machine is the host's own /usr, /etc and /var.
#
# Nothing here may reach the host: / is made rprivate first, /etc, /var and /usr (or all of
# ROOT) are overlays whose upper dirs live in DISK, /run and /tmp are new tmpfs, /dev is a
# private tmpfs with a handful of bind-mounted nodes and a new devpts instance, /sys and
# /proc/sys are read-only, and cgroup2 is mounted with nsdelegate on our own cgroup subtree.
set -euo pipefail

disk=$1
target=$2
root=${3:-}

mount --make-rprivate /

# The machine's disk: overlays over the host's /etc, /var and /usr, or over all of ROOT,
# mounted at $new (the machine's / seen from here until pivot_root).
if [ -z "$root" ]; then
  new=""
  for d in etc var usr; do
    mkdir -p "$disk/$d.upper" "$disk/$d.work"
    mount -t overlay overlay \
      -o "lowerdir=/$d,upperdir=$disk/$d.upper,workdir=$disk/$d.work" "/$d"
  done
else
  new=$disk/newroot
  mkdir -p "$disk/root.upper" "$disk/root.work" "$new"
  mount -t overlay overlay \
    -o "lowerdir=$root,upperdir=$disk/root.upper,workdir=$disk/root.work" "$new"
  # The /etc files stage one wrote (its etc.upper) belong to this tree's /etc.
  if [ -d "$disk/etc.upper" ]; then cp -a "$disk/etc.upper/." "$new/etc/"; rm -rf "$disk/etc.upper"; fi
  mount -t proc -o nosuid,nodev,noexec proc "$new/proc"
  mount --bind /sys "$new/sys"
fi
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$new/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$new/tmp"

# A private /dev, built aside and moved into place.
dev=$disk/dev.$$
mkdir -p "$dev"
mount -t tmpfs -o mode=0755,nosuid tmpfs "$dev"
for node in null zero full random urandom tty; do
  touch "$dev/$node"
  mount --bind "/dev/$node" "$dev/$node"
done
mkdir "$dev/pts" "$dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$dev/pts"
ln -s pts/ptmx "$dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$dev/shm"
ln -s /proc/self/fd "$dev/fd"
ln -s /proc/self/fd/0 "$dev/stdin"
ln -s /proc/self/fd/1 "$dev/stdout"
ln -s /proc/self/fd/2 "$dev/stderr"
mount --move "$dev" "$new/dev"
rmdir "$dev" 2>/dev/null || true

# The kernel's knobs stay the host's: read-only here (per mount, so the host keeps rw).
mount -o remount,bind,ro "$new/sys"
mount --bind "$new/proc/sys" "$new/proc/sys"
mount -o remount,bind,ro "$new/proc/sys"
if [ -e "$new/proc/sysrq-trigger" ]; then
  mount --bind "$new/proc/sysrq-trigger" "$new/proc/sysrq-trigger"
  mount -o remount,bind,ro "$new/proc/sysrq-trigger"
fi

# Our cgroup subtree (stage one put us in a cgroup of our own before unshare --cgroup).
mount -t cgroup2 -o nsdelegate cgroup2 "$new/sys/fs/cgroup"

hostname asset-agent-boot

if [ -n "$root" ]; then
  # Into the tree; the host's root goes away from this namespace.
  cd "$new"
  mkdir -p .host-root
  pivot_root . .host-root
  cd /
  umount -l /.host-root
  rmdir /.host-root
fi

exec env -i container=asset-agent-boot-test PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  /lib/systemd/systemd --system --unit="$target" --show-status=no
