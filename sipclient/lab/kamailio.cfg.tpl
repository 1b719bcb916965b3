#!KAMAILIO
# Rendered by sipclient.lab.kamailio for a loopback lab: a registrar with
# digest authentication (passwords in an in-memory htable, no database),
# record-routing proxy forwarding INVITEs by number prefix to sipp UASes.
# Placeholders (NAME between double percent signs) are replaced at render time.

debug=%%DEBUG%%
log_stderror=yes
memdbg=5
memlog=5
children=%%CHILDREN%%
tcp_children=%%CHILDREN%%
auto_aliases=no
# the UDP receive buffer kamailio probes up to (default 256 KB: a 512 KB socket).
# At the e2e bench's 200-line push it overflowed on loopback and dropped SIP
# messages: a lost 183 took a call's early media with it. Only helps where
# net.core.rmem_max allows it.
maxbuffer=4194304
dns=no
rev_dns=no
use_dns_cache=no
listen=udp:%%HOST%%:%%PORT%%
listen=tcp:%%HOST%%:%%PORT%%
alias="%%HOST%%:%%PORT%%"
alias="%%DOMAIN%%"
server_header="Server: sipclient-lab-kamailio"
user_agent_header="User-Agent: sipclient-lab-kamailio"

mpath="%%MPATH%%"
loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "tm.so"
loadmodule "tmx.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "sanity.so"
loadmodule "auth.so"
loadmodule "htable.so"

modparam("usrloc", "db_mode", 0)
modparam("registrar", "min_expires", %%MIN_EXPIRES%%)
modparam("registrar", "max_expires", 3600)
modparam("rr", "enable_full_lr", 1)
modparam("rr", "append_fromtag", 1)
modparam("tm", "fr_timer", 5000)
modparam("tm", "fr_inv_timer", 120000)
modparam("auth", "nonce_expire", %%NONCE_EXPIRE%%)
modparam("auth", "one_time_nonce", %%ONE_TIME_NONCE%%)
modparam("htable", "htable", "users=>size=10;")
modparam("htable", "htable", "seen=>size=10;autoexpire=120;")

event_route[htable:mod-init] {
%%USERS%%
}

request_route {
	if (!mf_process_maxfwd_header("10")) {
		sl_send_reply("483", "Too Many Hops");
		exit;
	}
	if (!sanity_check("17895", "7")) {
		xlog("L_WARN", "malformed request from $si:$sp\n");
		exit;
	}
	# keep-alive / readiness probe addressed to the proxy itself
	if (is_method("OPTIONS") && uri == myself && $rU == $null) {
		sl_send_reply("200", "Keepalive");
		exit;
	}
	if (is_method("CANCEL")) {
		if (t_check_trans()) {
			t_relay();
		}
		exit;
	}
	if (!is_method("ACK")) {
		t_check_trans();
	}
	# in-dialog requests follow the route set
	if (has_totag()) {
%%AUTH_IN_DIALOG%%
		if (loose_route()) {
			t_relay();
			exit;
		}
		if (is_method("ACK")) {
			if (t_check_trans()) {
				t_relay();
			}
			exit;
		}
		sl_send_reply("404", "Not here");
		exit;
	}
	if (is_method("REGISTER")) {
		route(AUTH_REGISTER);
		if (!save("location")) {
			sl_reply_error();
		}
		exit;
	}
	if (is_method("INVITE")) {
		route(AUTH_INVITE);
		record_route();
%%ROUTES%%
		# a registered extension
		if (!lookup("location")) {
			sl_send_reply("404", "Not Found");
			exit;
		}
		t_relay();
		exit;
	}
	if (is_method("OPTIONS")) {
		sl_send_reply("200", "OK");
		exit;
	}
	sl_send_reply("405", "Method Not Allowed");
	exit;
}

route[AUTH_REGISTER] {
	$var(pw) = $sht(users=>$tU);
	if ($var(pw) == $null || $var(pw) == 0) {
		sl_send_reply("403", "Unknown extension");
		exit;
	}
	if (!pv_www_authenticate("$td", "$var(pw)", "0")) {
%%REFUSE_STALE%%
		www_challenge("$td", "0");
		exit;
	}
	consume_credentials();
}

route[AUTH_INVITE] {
	$var(pw) = $sht(users=>$fU);
	if ($var(pw) == $null || $var(pw) == 0) {
		sl_send_reply("403", "Unknown extension");
		exit;
	}
	if (!pv_proxy_authenticate("$fd", "$var(pw)", "0")) {
%%REFUSE_STALE%%
		proxy_challenge("$fd", "0");
		exit;
	}
	consume_credentials();
}

route[TO_PEER] {
	if (!t_relay()) {
		sl_reply_error();
	}
	exit;
}
