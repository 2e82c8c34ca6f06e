SUMMARY = "Gatehouse appliance image"
DESCRIPTION = "The hardened Gatehouse appliance: read-only erofs root verified by dm-verity, \
an encrypted data partition with its key sealed to the TPM 2.0, the gateway as a sandboxed \
systemd service, nftables default deny, no shell login, no package manager, no compilers."
LICENSE = "MIT"

inherit core-image

# Nothing beyond what the appliance needs: no package management, no debug tweaks, no SSH.
IMAGE_FEATURES = "read-only-rootfs"
IMAGE_LINGUAS = ""
# dm-verity, dm-crypt, erofs and the TPM drivers are built into the kernel (recipes-kernel).
IMAGE_INSTALL = "packagegroup-core-boot gatehouse nftables cryptsetup libtss2 libtss2-tcti-device"
# No getty on the serial console: it shows first-boot information only.
SERIAL_CONSOLES = ""
ROOTFS_POSTPROCESS_COMMAND += "gatehouse_lockdown;"

# dm-verity over an erofs root (meta-security's dm-verity-img class); the root hash goes into
# the kernel command line of the initramfs image (dm-verity-image-initramfs).
IMAGE_FSTYPES = "erofs-lz4hc erofs-lz4hc.verity wic"
IMAGE_CLASSES += "dm-verity-img"
# nooelint: oelint.vars.mispell.unknown - defined by meta-security's dm-verity-img.bbclass
DM_VERITY_IMAGE = "gatehouse-image"
# nooelint: oelint.vars.mispell.unknown - defined by meta-security's dm-verity-img.bbclass
DM_VERITY_IMAGE_TYPE = "erofs-lz4hc"
INITRAMFS_IMAGE = "dm-verity-image-initramfs"
WKS_FILE = "gatehouse.wks.in"

gatehouse_lockdown() {
    # The firewall of the appliance, the journal in RAM, an empty machine-id on the read-only /etc.
    install -m 0644 ${IMAGE_ROOTFS}${sysconfdir}/nftables-gatehouse.conf ${IMAGE_ROOTFS}${sysconfdir}/nftables.conf
    printf '' > ${IMAGE_ROOTFS}${sysconfdir}/machine-id
    # Mask every login: the console is for first-boot information only.
    for unit in getty@.service serial-getty@.service console-getty.service; do
        ln -sf /dev/null ${IMAGE_ROOTFS}${sysconfdir}/systemd/system/$unit
    done
}
