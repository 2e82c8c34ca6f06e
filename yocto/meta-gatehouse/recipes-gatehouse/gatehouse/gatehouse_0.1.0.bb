# nooelint: oelint.var.mandatoryvar.HOMEPAGE - no public homepage: the layer builds the checkout it lives in
SUMMARY = "Gatehouse access gateway for AI agents"
DESCRIPTION = "Agents reach PostgreSQL through Gatehouse with an OIDC token as password; it \
vaults credentials, enforces policy, masks data and keeps a tamper-evident audit trail."
SECTION = "net"
LICENSE = "Apache-2.0"
# nooelint: oelint.var.licenseremotefile - the source tree has no license file of its own (Cargo.toml: Apache-2.0)
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

# Built from the Gatehouse checkout this layer belongs to (GATEHOUSE_SOURCE_DIR; local.conf may
# name another checkout);
# every crate is fetched by do_fetch from gatehouse-crates.inc (generated from the committed
# Cargo.lock by yocto/update-crates.py), so cargo builds offline.
inherit externalsrc cargo cargo-update-recipe-crates pkgconfig systemd useradd

# yocto/meta-gatehouse/recipes-gatehouse/gatehouse -> the repository root
GATEHOUSE_CHECKOUT := "${@os.path.normpath(os.path.join(d.getVar('THISDIR'), '..', '..', '..', '..'))}"
GATEHOUSE_SOURCE_DIR ??= "${GATEHOUSE_CHECKOUT}"
EXTERNALSRC = "${GATEHOUSE_SOURCE_DIR}"
EXTERNALSRC_BUILD = "${WORKDIR}/build"

require gatehouse-crates.inc

# tss-esapi links libtss2 (pkg-config); the SQL parser (pg_query) runs bindgen (libclang) and protoc.
DEPENDS += "clang-native protobuf-native tpm2-tss"

CARGO_SRC_DIR = ""
# The same C hardening as .cargo/config.toml; the distro adds its security flags on top.
CFLAGS:append = " -fstack-protector-strong -fstack-clash-protection"
export LIBCLANG_PATH = "${STAGING_LIBDIR_NATIVE}"

SYSTEMD_SERVICE:${PN} = "gatehouse.service gatehouse-data.service gatehouse-console.service"
SYSTEMD_AUTO_ENABLE = "enable"

USERADD_PACKAGES = "${PN}"
USERADD_PARAM:${PN} = "--system --user-group --groups tss --home-dir ${localstatedir}/lib/gatehouse \
    --no-create-home --shell /sbin/nologin gatehouse"
GROUPADD_PARAM:${PN} = "--system tss"

# The units, firewall, first-boot scripts and default config are the ones image/ uses.
ROOTFS_SRC = "${S}/image/rootfs"

# Only the gateway binary of the workspace (cargo runs --frozen: Cargo.lock and the fetched crates).
do_compile() {
    oe_cargo_build --package gatehouse
}

do_install:append() {
    install -d ${D}${systemd_system_unitdir} ${D}${libdir}/gatehouse ${D}${datadir}/gatehouse \
        ${D}${sysconfdir}/gatehouse ${D}${sysconfdir}/udev/rules.d
    for unit in gatehouse.service gatehouse-data.service gatehouse-console.service; do
        install -m 0644 ${ROOTFS_SRC}/etc/systemd/system/$unit ${D}${systemd_system_unitdir}/
    done
    install -m 0755 ${ROOTFS_SRC}/usr/lib/gatehouse/data-volume ${D}${libdir}/gatehouse/
    install -m 0755 ${ROOTFS_SRC}/usr/lib/gatehouse/console-info ${D}${libdir}/gatehouse/
    echo "GH_DATA_PCRS=${GATEHOUSE_DATA_PCRS}" > ${D}${libdir}/gatehouse/data-volume.conf
    install -m 0644 ${ROOTFS_SRC}/usr/share/gatehouse/gatehouse.toml ${D}${datadir}/gatehouse/
    install -m 0644 ${ROOTFS_SRC}/etc/nftables.conf ${D}${sysconfdir}/nftables-gatehouse.conf
    install -m 0644 ${ROOTFS_SRC}/etc/udev/rules.d/70-gatehouse.rules ${D}${sysconfdir}/udev/rules.d/
    ln -sf ${localstatedir}/lib/gatehouse/gatehouse.toml ${D}${sysconfdir}/gatehouse/gatehouse.toml
}

# PCRs the data volume key is sealed to (systemd-cryptenroll --tpm2-pcrs); on a board with
# UEFI Secure Boot, "7".
GATEHOUSE_DATA_PCRS ??= "7"

RDEPENDS:${PN} += "cryptsetup e2fsprogs-mke2fs libtss2 libtss2-tcti-device nftables systemd tar util-linux-runuser"
