//! Scan-and-route of one message in a loop, as the criterion bench does
//! (for `valgrind --tool=callgrind`, which counts instructions exactly).
fn main() {
    let sdp = "v=0\r\no=alice 2890844526 2890844526 IN IP4 192.0.2.101\r\ns=-\r\n\
c=IN IP4 192.0.2.101\r\nt=0 0\r\nm=audio 49172 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";
    let msg = format!(
        "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.101:5060;branch=z9hG4bK74bf9;rport\r\nMax-Forwards: 70\r\n\
From: \"Alice\" <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\nTo: \"Bob\" <sip:bob@biloxi.example.com>\r\n\
Call-ID: 3848276298220188511@atlanta.example.com\r\nCSeq: 31862 INVITE\r\n\
Contact: <sip:alice@192.0.2.101:5060;transport=udp>\r\n\
Allow: INVITE, ACK, CANCEL, BYE, REFER, NOTIFY, OPTIONS, UPDATE\r\nSupported: replaces, timer\r\n\
User-Agent: Handset/4.2\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    let h = handover_sip::ids::Hashing::default();
    let mut n = 0u64;
    for _ in 0..20_000 {
        let m = handover_sip::scan(std::hint::black_box(msg.as_bytes())).unwrap();
        n = n.wrapping_add(h.affinity_key(m.call_id()));
    }
    println!("{n}");
}
