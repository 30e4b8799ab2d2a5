# Debian packages `make test` and `make demo` run for real, installed when
# missing (as root). Sourced by scripts/test.sh and scripts/demo.sh.
#   prometheus (metrics, promtool), prometheus-alertmanager (alert delivery;
#   amtool is the oracle of our routing), openssl (TLS peers), nginx with
#   ModSecurity v3 and the OWASP CRS (the WAF gateway); the node's containerd, runc, CNI plugins,
#   iptables, ipset, nftables, conntrack; mmdebstrap for the images;
#   wpasupplicant, hostapd, network-manager (nmcli), openssh-server and kmod:
#   the oracles the node agent's parsers are tested against.
packages=(prometheus prometheus-alertmanager openssl nginx libnginx-mod-http-modsecurity modsecurity-crs
  containerd runc containernetworking-plugins iptables ipset nftables conntrack iproute2 mmdebstrap
  wpasupplicant hostapd network-manager openssh-server kmod)
missing=no
for tool in prometheus promtool prometheus-alertmanager amtool openssl nginx containerd runc ipset nft iptables conntrack mmdebstrap \
  wpa_supplicant wpa_cli hostapd hostapd_cli nmcli sshd ssh-keygen modprobe; do
  command -v "$tool" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin" command -v "$tool" >/dev/null 2>&1 || missing=yes
done
if [[ $missing == yes || ! -e /usr/lib/nginx/modules/ngx_http_modsecurity_module.so \
  || ! -d /usr/share/modsecurity-crs/rules || ! -x /usr/lib/cni/bridge ]]; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "error: install Debian's packages first: sudo apt-get install ${packages[*]}" >&2
    exit 1
  fi
  apt-get update -qq
  # Installed, never started as services (the tests run them): a
  # policy-rc.d of our own for the install only.
  own_policy=no
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    own_policy=yes
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  [[ $own_policy == yes ]] && rm -f /usr/sbin/policy-rc.d
fi
# nginx is run by the tests, never as a service.
export PATH="$PATH:/usr/sbin"
