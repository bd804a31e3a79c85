# Sourced by scripts/test.sh and scripts/demo.sh: apt_install PACKAGE... runs "apt-get update" once first,
# with sudo only when not root.
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

APT_UPDATED=""
apt_install() {
    if [ -z "$APT_UPDATED" ]; then
        $SUDO apt-get update -q
        APT_UPDATED=1
    fi
    $SUDO apt-get install -y -q --no-install-recommends "$@"
}
