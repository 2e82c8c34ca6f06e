#!/usr/bin/env bash
# Hardening check of an ELF binary (the release `gatehouse` that goes into the image), with
# readelf only: PIE, full RELRO, NX stack, stack protector in the C code, no RPATH/RUNPATH,
# no executable+writable segment. Exits non-zero naming every failed check.
#
# Usage: image/check-hardening.sh BINARY
set -uo pipefail

BIN="${1:?usage: check-hardening.sh BINARY}"
[ -f "$BIN" ] || { echo "check-hardening: no such file: $BIN" >&2; exit 2; }
command -v readelf >/dev/null || { echo "check-hardening: readelf missing (binutils)" >&2; exit 2; }

header="$(readelf -hW "$BIN")" || { echo "check-hardening: not an ELF file: $BIN" >&2; exit 2; }
phdrs="$(readelf -lW "$BIN")"
dynamic="$(readelf -dW "$BIN")"
dynsyms="$(readelf --dyn-syms -W "$BIN")"

fails=0
check() { # check NAME OK(0/1) DETAIL
  if [ "$2" -eq 0 ]; then
    printf '  ok    %-16s %s\n' "$1" "$3"
  else
    printf '  FAIL  %-16s %s\n' "$1" "$3"
    fails=$((fails + 1))
  fi
}
has() { grep -qE "$2" <<<"$1"; }

echo "hardening of $BIN"
# PIE: a shared-object type executable with an interpreter and the PIE flag.
if has "$header" 'Type:[[:space:]]+DYN' && has "$phdrs" '^[[:space:]]*INTERP' && has "$dynamic" 'FLAGS_1.*PIE'; then
  check PIE 0 "ET_DYN with PT_INTERP and DF_1_PIE"
else
  check PIE 1 "not a position-independent executable"
fi
# Full RELRO: a GNU_RELRO segment and immediate binding (BIND_NOW / DF_1_NOW).
if has "$phdrs" 'GNU_RELRO' && has "$dynamic" '(BIND_NOW|FLAGS_1.*[[:space:]]NOW)'; then
  check "full RELRO" 0 "GNU_RELRO + BIND_NOW"
elif has "$phdrs" 'GNU_RELRO'; then
  check "full RELRO" 1 "partial RELRO only (no BIND_NOW)"
else
  check "full RELRO" 1 "no GNU_RELRO segment"
fi
# NX: the GNU_STACK segment exists and is not executable.
stack="$(grep -E '^[[:space:]]*GNU_STACK' <<<"$phdrs")"
if [ -n "$stack" ] && ! awk '{print $(NF-1), $NF}' <<<"$stack" | grep -q 'E'; then
  check NX 0 "GNU_STACK not executable"
else
  check NX 1 "executable or missing GNU_STACK: ${stack:-none}"
fi
# No segment both writable and executable.
if grep -E '^[[:space:]]*LOAD' <<<"$phdrs" | grep -qE '[[:space:]]RWE[[:space:]]'; then
  check "W^X segments" 1 "a LOAD segment is writable and executable"
else
  check "W^X segments" 0 "no RWE LOAD segment"
fi
# Stack protector: the C code (ring, SQLite, libpg_query) calls __stack_chk_fail.
if has "$dynsyms" '__stack_chk_fail'; then
  check "stack protector" 0 "__stack_chk_fail imported (C code built with -fstack-protector-strong)"
else
  check "stack protector" 1 "no __stack_chk_fail: C code built without -fstack-protector (see .cargo/config.toml)"
fi
# FORTIFY_SOURCE is informational (only some C calls can be fortified).
nfort="$(grep -cE '__[a-z0-9_]+_chk@' <<<"$dynsyms" || true)"
printf '  info  %-16s %s\n' "FORTIFY_SOURCE" "$nfort fortified libc calls"
# RPATH/RUNPATH let a writable directory inject libraries.
if has "$dynamic" '\((RPATH|RUNPATH)\)'; then
  check "no RPATH" 1 "$(grep -E '\((RPATH|RUNPATH)\)' <<<"$dynamic" | sed 's/^ *//')"
else
  check "no RPATH" 0 "no RPATH/RUNPATH"
fi

if [ "$fails" -ne 0 ]; then
  echo "hardening: $fails check(s) failed"
  exit 1
fi
echo "hardening: all checks passed"
