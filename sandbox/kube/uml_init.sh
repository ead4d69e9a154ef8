#!/bin/sh
# PID 1 of a sandbox UML guest (sandbox/kube/uml.py). The guest's root is the host's file system
# (hostfs), so nothing here may write to it: /run is the guest's own tmpfs, and /etc, /var, /opt
# and /tmp are overlays whose upper layer lives in that tmpfs (the plugins find their
# configuration where a GKE node keeps it, /etc/cni/net.d, and the host's files stay untouched).
# /tmp is an overlay, not an empty tmpfs: a checkout under the host's /tmp (a CI clone) keeps its
# agent and init script visible to the guest.
# The kernel passes MPCNI_* from its command line in the environment.
set -e
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs -o mode=0755 tmpfs /run
release=$(uname -r)
mkdir -p "/run/modroot/lib/modules/$release"
mount --bind "/usr/lib/uml/modules/$release" "/run/modroot/lib/modules/$release"
for module in ipv6 overlay veth bridge dummy ipvlan; do
  modprobe -d /run/modroot "$module"
done
for dir in etc var opt tmp; do
  mkdir -p "/run/overlay/$dir/upper" "/run/overlay/$dir/work"
  mount -t overlay overlay -o "lowerdir=/$dir,upperdir=/run/overlay/$dir/upper,workdir=/run/overlay/$dir/work" "/$dir"
done
ip link set lo up
ip addr add "$MPCNI_GUEST_ADDR" dev vec0
ip link set vec0 up
echo "mpcni: guest ready $(cat /proc/uptime)"
exec /usr/bin/python3 -I "$MPCNI_AGENT" "${MPCNI_GUEST_ADDR%/*}" "$MPCNI_AGENT_PORT"
