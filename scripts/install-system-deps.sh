#!/usr/bin/env bash
# Install the Debian packages that sarcart's integration tests use, when they are missing and apt
# is usable (root, apt-get present). Otherwise say which tests will be skipped. Idempotent.
set -u
declare -A probe=(
  [dcmtk]=storescu [dicom3tools]=dciodvfy [plastimatch]=plastimatch
  [orthanc]=Orthanc [chromium]=chromium
)
missing=()
for pkg in "$@"; do
  cmd=${probe[$pkg]:-$pkg}
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/sarcart-apt.log 2>&1 \
     || { apt-get update -q >>/tmp/sarcart-apt.log 2>&1 && \
          apt-get install -y -q --no-install-recommends "${missing[@]}" >>/tmp/sarcart-apt.log 2>&1; }; then
    exit 0
  fi
  echo "WARNING: apt-get could not install ${missing[*]} (see /tmp/sarcart-apt.log); tests that need them will be skipped"
else
  echo "WARNING: missing ${missing[*]} and apt is not usable (not root?); tests that need them will be skipped"
fi
exit 0
