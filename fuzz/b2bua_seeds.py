#!/usr/bin/env python3
"""Writes the seed corpus of the `b2bua_messages` fuzz target into
corpus/b2bua_messages: in-dialog requests from both parties of the
target's answered call ($A, $B, $T name its dialogs), transfers blind and
attended, an INVITE with Replaces; each in both transfer modes."""
import os

SDP = "v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n"
FRAG = "SIP/2.0 200 OK\r\n"


def request(method, seq, branch, side, extra="", body=""):
    ct = {SDP: "Content-Type: application/sdp\r\n", FRAG: "Content-Type: message/sipfrag\r\n"}.get(body, "")
    if side == "a":
        port, frm, to, cid = "5061", "<sip:alice@127.0.0.1:5061>;tag=at", "<sip:b@127.0.0.1:5060>;tag=$A", "a-call"
    else:
        port, frm, to, cid = "5071", "<sip:b@127.0.0.1:5060>;tag=bt", "<sip:alice@127.0.0.1:5061>;tag=$T", "$B"
    return (
        f"{method} sip:b2bua@127.0.0.1:5060;k=1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-hx{branch};k=1\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{branch}\r\nMax-Forwards: 69\r\n"
        f"From: {frm}\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: {seq} {method}\r\n"
        f"Contact: <sip:{side}@127.0.0.1:{port}>\r\n{extra}{ct}Content-Length: {len(body)}\r\n\r\n{body}"
    )


INVITE_REPLACES = (
    "INVITE sip:b@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-hxc;k=1\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5072;branch=z9hG4bKc\r\nMax-Forwards: 69\r\nFrom: <sip:c@127.0.0.1:5072>;tag=ct\r\n"
    "To: <sip:b@127.0.0.1:5060>\r\nCall-ID: c-call\r\nCSeq: 1 INVITE\r\nContact: <sip:c@127.0.0.1:5072>\r\n"
    f"Replaces: $B;to-tag=bt;from-tag=$T\r\nContent-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n\r\n{SDP}"
)

SEEDS = {
    "reinvite_a": [request("INVITE", 2, "r1", "a", body=SDP), request("ACK", 2, "r1a", "a")],
    "reinvite_b": [request("INVITE", 2, "r2", "b", body=SDP)],
    "bye_a": [request("BYE", 2, "b1", "a")],
    "bye_b": [request("BYE", 2, "b2", "b")],
    "info_update": [
        request("INFO", 2, "i1", "a"),
        request("UPDATE", 2, "u1", "b", extra="Session-Expires: 90;refresher=uac\r\n", body=SDP),
    ],
    "refer_blind_b": [
        request("REFER", 2, "f1", "b", extra="Refer-To: <sip:c@127.0.0.1:5072>\r\nReferred-By: <sip:b@127.0.0.1:5071>\r\n"),
        request("NOTIFY", 2, "n1", "a", extra="Event: refer;id=1\r\nSubscription-State: terminated;reason=noresource\r\n", body=FRAG),
        request("BYE", 3, "b3", "b"),
    ],
    "refer_attended_a": [
        request("REFER", 2, "f2", "a", extra="Refer-To: <sip:c@127.0.0.1:5072?Replaces=$B%3Bto-tag%3Dbt%3Bfrom-tag%3D$T>\r\n")
    ],
    "invite_replaces": [INVITE_REPLACES],
    "subscribe_options": [
        request("SUBSCRIBE", 2, "s1", "b", extra="Event: refer\r\nExpires: 60\r\n"),
        request("OPTIONS", 2, "o1", "a"),
        request("MESSAGE", 3, "m1", "a"),
    ],
}

here = os.path.dirname(os.path.abspath(__file__))
out = os.path.join(here, "corpus", "b2bua_messages")
os.makedirs(out, exist_ok=True)
for name, msgs in SEEDS.items():
    for mode in (0, 1):
        data = bytes([mode]) + b"\0".join(bytes([2]) + m.encode() for m in msgs)
        with open(os.path.join(out, f"{name}_{mode}"), "wb") as f:
            f.write(data)
