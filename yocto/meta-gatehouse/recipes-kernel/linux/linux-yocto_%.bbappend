# What the appliance needs from the kernel: TPM 2.0, dm-verity/dm-crypt, erofs, nftables,
# the watchdog of the board, virtio on QEMU. Only for the Gatehouse machines.
FILESEXTRAPATHS:prepend:gatehouse-x86-64 := "${THISDIR}/files:"
FILESEXTRAPATHS:prepend:gatehouse-qemu := "${THISDIR}/files:"

SRC_URI:append:gatehouse-x86-64 = " file://gatehouse.cfg file://gatehouse-board.cfg"
SRC_URI:append:gatehouse-qemu = " file://gatehouse.cfg file://gatehouse-qemu.cfg"
