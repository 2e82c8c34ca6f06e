#!/usr/bin/env bash
# Build the Gatehouse appliance image on Debian 12, from Debian packages and the release
# `gatehouse` binary. See image/README.md for what the image is and how it boots.
#
# Usage: image/build.sh [--out DIR]
# Environment:
#   GATEHOUSE_CACHE         cache dir (default ~/.cache/gatehouse); the image cache is $GATEHOUSE_CACHE/image
#   GATEHOUSE_RELEASE_BIN   use this gatehouse binary instead of `cargo build --release -p gatehouse`
#   CARGO_TARGET_DIR        cargo's target dir (default $GATEHOUSE_CACHE/target)
#   GATEHOUSE_DATA_PCRS     PCRs the data volume key is sealed to (systemd-cryptenroll --tpm2-pcrs;
#                           default empty: sealed to the TPM, not to measured boot state; see README)
#   DEBIAN_MIRROR           default http://deb.debian.org/debian
#
# Output (default $GATEHOUSE_CACHE/image/out): gatehouse.img (GPT: erofs root, dm-verity hash
# tree, data partition that first boot encrypts), vmlinuz, initrd.img, cmdline (with the root
# hash), manifest.json. Every step is cached: the base root by its package list, the image by
# the hash of everything that goes into it, so a rebuild with nothing changed takes seconds.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
export GATEHOUSE_CACHE="${GATEHOUSE_CACHE:-$HOME/.cache/gatehouse}"
CACHE="$GATEHOUSE_CACHE/image"
OUT="$CACHE/out"
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DATA_PCRS="${GATEHOUSE_DATA_PCRS:-}"
# Sizes of the data partition and the gaps, MiB.
DATA_MIB=256
# Fixed identifiers keep the image reproducible for the same inputs.
EPOCH=1700000000

while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

T0=$SECONDS
step() { printf '\n[image %3ss] %s\n' "$((SECONDS - T0))" "$*"; }
die() { echo "image/build.sh: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, chroot)"
for tool in debootstrap mkfs.erofs veritysetup sfdisk zstd chroot; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool missing: apt-get install debootstrap erofs-utils cryptsetup-bin fdisk zstd"
done
mkdir -p "$CACHE" "$OUT"

# ---------------------------------------------------------------------------------------
step "1/6 release binary"
if [ -n "${GATEHOUSE_RELEASE_BIN:-}" ]; then
  BIN="$GATEHOUSE_RELEASE_BIN"
else
  [ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$GATEHOUSE_CACHE/target}"
  (cd "$ROOT" && cargo build --release --locked -p gatehouse)
  BIN="$CARGO_TARGET_DIR/release/gatehouse"
fi
[ -x "$BIN" ] || die "no gatehouse binary at $BIN"
# The image carries the binary without debug info; the hardening check runs on this copy.
STRIPPED="$CACHE/gatehouse.stripped"
if [ ! -f "$STRIPPED" ] || [ "$BIN" -nt "$STRIPPED" ]; then
  objcopy --strip-debug "$BIN" "$STRIPPED.tmp" && mv "$STRIPPED.tmp" "$STRIPPED"
fi
"$HERE/check-hardening.sh" "$STRIPPED"

# ---------------------------------------------------------------------------------------
step "2/6 base root (debootstrap $SUITE minbase, cached by package list)"
PKGS="$(grep -v '^\s*#' "$HERE/packages.txt" | sed 's/\s//g' | grep . | sort | paste -sd, -)"
BASE_KEY="$(printf '%s\n' "$SUITE" "$MIRROR" "$PKGS" base-v1 | sha256sum | cut -c1-16)"
BASE_TAR="$CACHE/base-$BASE_KEY.tar.zst"
if [ -f "$BASE_TAR" ]; then
  echo "cached: $BASE_TAR"
else
  work="$CACHE/work/base"
  rm -rf "$work" && mkdir -p "$work"
  echo "debootstrap --variant=minbase ($PKGS); progress follows"
  # One line per phase and every 25th package, not debootstrap's ~600 lines.
  debootstrap --variant=minbase --include="$PKGS" "$SUITE" "$work" "$MIRROR" \
    | grep --line-buffered -E '^I: (Retriev|Extract|Install|Configur|Unpack|Base system)' \
    | awk '{ n[$2]++; if (n[$2] == 1 || n[$2] % 25 == 0) { printf "  %s (%d)\n", $0, n[$2]; fflush() } }'
  [ "${PIPESTATUS[0]}" -eq 0 ] || die "debootstrap failed (see $work/debootstrap/debootstrap.log)"
  chroot "$work" apt-get clean
  rm -rf "$work"/var/lib/apt/lists/*
  tar -C "$work" --numeric-owner --xattrs -cf - . | zstd -q -T0 -3 -o "$BASE_TAR.tmp"
  mv "$BASE_TAR.tmp" "$BASE_TAR"
  rm -rf "$work"
  echo "base root cached: $BASE_TAR ($(du -h "$BASE_TAR" | cut -f1))"
fi

# ---------------------------------------------------------------------------------------
step "3/6 inputs"
# Everything that goes into the image; if none of it changed, the last image is current.
IMAGE_KEY="$( {
  echo "$BASE_KEY" "$DATA_PCRS" "$DATA_MIB" image-v1
  sha256sum "$STRIPPED" "$0" | cut -d' ' -f1
  (cd "$HERE/rootfs" && find . -print0 | LC_ALL=C sort -z | xargs -0 stat -c '%n %a' && \
     find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
} | sha256sum | cut -c1-16)"
if [ -f "$OUT/manifest.json" ] && grep -q "\"key\": \"$IMAGE_KEY\"" "$OUT/manifest.json" \
   && [ -f "$OUT/gatehouse.img" ] && [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initrd.img" ]; then
  echo "image up to date (key $IMAGE_KEY): $OUT"
  cat "$OUT/manifest.json"
  exit 0
fi
echo "image key $IMAGE_KEY"

# ---------------------------------------------------------------------------------------
step "4/6 stage the root"
STAGE="$CACHE/work/stage"
if mountpoint -q "$STAGE/proc" 2>/dev/null; then umount "$STAGE/proc"; fi
rm -rf "$STAGE" && mkdir -p "$STAGE"
cleanup() { if mountpoint -q "$STAGE/proc" 2>/dev/null; then umount "$STAGE/proc" || true; fi; }
trap cleanup EXIT
zstd -q -dc "$BASE_TAR" | tar -C "$STAGE" --numeric-owner --xattrs -xf -
cp -a --no-preserve=ownership "$HERE/rootfs/." "$STAGE/"
install -m 0755 "$STRIPPED" "$STAGE/usr/bin/gatehouse"
printf 'GH_DATA_PCRS=%s\n' "$DATA_PCRS" >"$STAGE/usr/lib/gatehouse/data-volume.conf"
KVER="$(ls "$STAGE/lib/modules" | sort -V | tail -n1)"
[ -n "$KVER" ] || die "no kernel in the base root"
mount -t proc proc "$STAGE/proc"
chroot "$STAGE" /bin/sh -eu <<EOF
useradd --system --user-group --groups tss --home-dir /var/lib/gatehouse --no-create-home \
  --shell /usr/sbin/nologin gatehouse
echo gatehouse >/etc/hostname
# Empty machine-id on a read-only /etc: systemd makes a transient one at every boot.
: >/etc/machine-id
ln -sf /run/systemd/resolve/stub-resolv.conf /etc/resolv.conf
systemctl enable gatehouse.service gatehouse-data.service gatehouse-console.service \
  nftables.service systemd-networkd.service systemd-resolved.service >/dev/null 2>&1
# No login anywhere: the serial console shows first-boot information only.
systemctl mask getty@.service serial-getty@.service console-getty.service \
  getty.target systemd-networkd-wait-online.service e2scrub_all.timer e2scrub_reap.service \
  fstrim.timer apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
  systemd-timesyncd.service systemd-pstore.service systemd-update-utmp.service \
  systemd-update-utmp-runlevel.service systemd-random-seed.service systemd-journal-flush.service \
  ldconfig.service systemd-tmpfiles-clean.timer >/dev/null 2>&1
update-initramfs -c -k "$KVER" >/dev/null
EOF
umount "$STAGE/proc"
cp "$STAGE/boot/vmlinuz-$KVER" "$CACHE/work/vmlinuz"
cp "$STAGE/boot/initrd.img-$KVER" "$CACHE/work/initrd.img"
# No package manager, no build tools, no interpreters beyond the POSIX shell the units use,
# no boot files (the kernel and initramfs live outside the verified root).
rm -rf "$STAGE"/boot/* "$STAGE"/etc/apt "$STAGE"/var/lib/apt "$STAGE"/var/cache/apt \
  "$STAGE"/usr/lib/apt "$STAGE"/var/lib/dpkg "$STAGE"/etc/dpkg "$STAGE"/usr/share/dpkg \
  "$STAGE"/usr/bin/apt* "$STAGE"/usr/bin/dpkg* "$STAGE"/usr/sbin/dpkg* "$STAGE"/usr/lib/dpkg \
  "$STAGE"/usr/bin/perl* "$STAGE"/usr/lib/x86_64-linux-gnu/perl* "$STAGE"/usr/share/perl* \
  "$STAGE"/usr/share/perl5 "$STAGE"/bin/busybox "$STAGE"/usr/bin/busybox \
  "$STAGE"/usr/share/initramfs-tools "$STAGE"/usr/sbin/mkinitramfs "$STAGE"/usr/sbin/update-initramfs \
  "$STAGE"/etc/initramfs-tools \
  "$STAGE"/usr/share/doc "$STAGE"/usr/share/man "$STAGE"/usr/share/info "$STAGE"/usr/share/locale \
  "$STAGE"/usr/share/lintian "$STAGE"/var/log/* "$STAGE"/var/cache/debconf "$STAGE"/usr/bin/su \
  "$STAGE"/usr/sbin/debootstrap "$STAGE"/usr/bin/login
# Modules only for what a board can have: drop sound, graphics, wireless, infiniband …
for d in sound drivers/gpu drivers/media drivers/net/wireless drivers/infiniband drivers/staging \
         drivers/bluetooth net/bluetooth net/wireless net/mac80211 drivers/isdn arch/x86/kvm; do
  rm -rf "$STAGE/lib/modules/$KVER/kernel/$d"
done
chroot "$STAGE" /sbin/depmod "$KVER"
# Nothing may remain that compiles or installs code.
for forbidden in gcc cc c++ ld as make apt apt-get dpkg perl python3 sshd ssh busybox su sudo login; do
  if chroot "$STAGE" /bin/sh -c "command -v $forbidden" >/dev/null 2>&1; then
    die "forbidden program in the root: $forbidden"
  fi
done

# The service's sandbox, as systemd rates it (lower is better; 0-10).
systemd-analyze security --offline=yes --root="$STAGE" --no-pager gatehouse.service \
  >"$CACHE/work/security.txt" 2>&1 || true
EXPOSURE="$(sed -n 's/.*Overall exposure level for gatehouse.service: \([0-9.]*\).*/\1/p' "$CACHE/work/security.txt")"
echo "systemd-analyze security gatehouse.service: exposure ${EXPOSURE:-unknown} (table in $OUT/security.txt)"

# ---------------------------------------------------------------------------------------
step "5/6 erofs root + dm-verity"
W="$CACHE/work"
rm -f "$W/root.erofs" "$W/root.verity"
mkfs.erofs -zlz4hc -T"$EPOCH" -U 6a1d3a8e-9c53-4b1e-9a6f-0e7c1a9b5f01 "$W/root.erofs" "$STAGE" >/dev/null
SALT="$(printf '%s' "$IMAGE_KEY" | sha256sum | cut -d' ' -f1)"
ROOTHASH="$(veritysetup format "$W/root.erofs" "$W/root.verity" --salt="$SALT" \
  --uuid=2f0b7d5c-6a8e-4d2b-bf61-3f6d1c4a9e02 | awk '/^Root hash:/ {print $3}')"
[ "${#ROOTHASH}" -eq 64 ] || die "veritysetup format gave no root hash"
veritysetup verify "$W/root.erofs" "$W/root.verity" "$ROOTHASH"
echo "root $(du -h --apparent-size "$W/root.erofs" | cut -f1), hash tree $(du -h --apparent-size "$W/root.verity" | cut -f1), root hash $ROOTHASH"

# ---------------------------------------------------------------------------------------
step "6/6 disk image"
mib() { echo $(( ($(stat -c %s "$1") + 1048575) / 1048576 )); }
ROOT_MIB="$(mib "$W/root.erofs")"
VERITY_MIB="$(mib "$W/root.verity")"
TOTAL_MIB=$((1 + ROOT_MIB + VERITY_MIB + DATA_MIB + 1))
IMG="$W/gatehouse.img"
rm -f "$IMG" && truncate -s "${TOTAL_MIB}M" "$IMG"
# GPT: root (x86-64 root type), its verity hash tree (x86-64 root verity type), data (Linux).
sfdisk -q --no-reread --no-tell-kernel "$IMG" <<EOF
label: gpt
label-id: 0B0E7C1E-5A3D-4F7A-9C2E-6D1B8A4F3E10
first-lba: 2048
start=1MiB, size=${ROOT_MIB}MiB, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=gh-root, uuid=${ROOTHASH:0:8}-${ROOTHASH:8:4}-${ROOTHASH:12:4}-${ROOTHASH:16:4}-${ROOTHASH:20:12}
size=${VERITY_MIB}MiB, type=2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5, name=gh-verity, uuid=${ROOTHASH:32:8}-${ROOTHASH:40:4}-${ROOTHASH:44:4}-${ROOTHASH:48:4}-${ROOTHASH:52:12}
size=${DATA_MIB}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=gh-data, uuid=7c0e6f8a-1d2b-4e3c-9a5f-8b7d6e5c4a30
EOF
dd if="$W/root.erofs" of="$IMG" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$W/root.verity" of="$IMG" bs=1M seek=$((1 + ROOT_MIB)) conv=notrunc,sparse status=none

CMDLINE="console=ttyS0 root=/dev/mapper/gh-root rootfstype=erofs ro gh.verity=$ROOTHASH net.ifnames=0 systemd.gpt_auto=0 panic=10 quiet loglevel=4 systemd.show_status=error"
mv "$IMG" "$OUT/gatehouse.img"
mv "$W/vmlinuz" "$OUT/vmlinuz"
mv "$W/initrd.img" "$OUT/initrd.img"
mv "$W/security.txt" "$OUT/security.txt"
echo "$CMDLINE" >"$OUT/cmdline"
cat >"$OUT/manifest.json" <<EOF
{
  "key": "$IMAGE_KEY",
  "kernel": "$KVER",
  "roothash": "$ROOTHASH",
  "root_offset_mib": 1,
  "root_size_bytes": $(stat -c %s "$W/root.erofs"),
  "verity_offset_mib": $((1 + ROOT_MIB)),
  "verity_size_bytes": $(stat -c %s "$W/root.verity"),
  "disk_mib": $TOTAL_MIB,
  "data_mib": $DATA_MIB,
  "data_pcrs": "$DATA_PCRS",
  "systemd_exposure": "${EXPOSURE:-unknown}",
  "vmlinuz_bytes": $(stat -c %s "$OUT/vmlinuz"),
  "initrd_bytes": $(stat -c %s "$OUT/initrd.img"),
  "gatehouse_sha256": "$(sha256sum "$STRIPPED" | cut -d' ' -f1)"
}
EOF
rm -rf "$STAGE" "$W/root.erofs" "$W/root.verity"
step "done: $OUT"
cat "$OUT/manifest.json"
