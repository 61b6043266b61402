//! Just enough SDP reading for the SFU: which audio and video sections an
//! offer has and in which direction (checked before any peer connection is
//! built, so a bad offer costs nothing), and which codec each section of an
//! answer settled on (what the broadcast forwards, and what viewers must
//! accept). The text is parsed by the WebRTC stack's own SDP types
//! (`rtc::sdp`), so an offer is read here exactly as the stack reads it
//! when it negotiates; everything else in the SDP is the stack's business.

use std::fmt;
use std::io::Cursor;

use rtc::sdp::description::common::Attribute;
use rtc::sdp::direction::Direction;
use rtc::sdp::{MediaDescription, SessionDescription};

/// The kinds of media the SFU forwards. Data channels and anything else
/// in an offer are left to the stack (and get no answer section of use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MediaKind {
    Audio,
    Video,
}

impl MediaKind {
    pub const ALL: [MediaKind; 2] = [MediaKind::Audio, MediaKind::Video];

    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
        }
    }
}

impl fmt::Display for MediaKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a section in this direction sends media (from its own point
/// of view: the offerer's in an offer, ours in an answer).
fn sends(d: &Direction) -> bool {
    matches!(d, Direction::SendRecv | Direction::SendOnly)
}

fn receives(d: &Direction) -> bool {
    matches!(d, Direction::SendRecv | Direction::RecvOnly)
}

/// A codec as one SDP section describes it (`a=rtpmap`, `a=fmtp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdpCodec {
    pub payload_type: u8,
    /// As in `a=rtpmap`, e.g. `H264`, `VP8`, `opus`.
    pub name: String,
    pub clock_rate: u32,
    /// Audio channels; 0 for video.
    pub channels: u16,
    pub fmtp: String,
}

impl SdpCodec {
    /// The MIME type the WebRTC stack names this codec by (`video/H264`).
    pub fn mime_type(&self, kind: MediaKind) -> String {
        format!("{kind}/{}", self.name)
    }
}

/// One `m=audio` or `m=video` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub kind: MediaKind,
    /// 0 in an answer means the section was refused.
    pub port: u16,
    /// The section's own, else the session's, else `sendrecv`.
    pub direction: Direction,
    /// Payload types in the `m=` line's order of preference.
    pub payload_types: Vec<u8>,
    pub codecs: Vec<SdpCodec>,
}

impl Section {
    /// The codec the section's first payload type names: in an answer,
    /// the one the sender uses.
    pub fn first_codec(&self) -> Option<&SdpCodec> {
        let pt = *self.payload_types.first()?;
        self.codecs.iter().find(|c| c.payload_type == pt)
    }
}

/// Why an offer was refused before negotiation; the text goes to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SdpError(pub String);

fn err(msg: impl Into<String>) -> SdpError {
    SdpError(msg.into())
}

/// Reads the audio and video sections of a session description. Refuses
/// text that is not SDP, and more than one section of a kind (the SFU
/// forwards one audio and one video track).
pub fn sections(sdp: &str) -> Result<Vec<Section>, SdpError> {
    let text = sdp.trim_start_matches('\u{feff}');
    let desc = SessionDescription::unmarshal(&mut Cursor::new(text)).map_err(|e| {
        err(format!(
            "the body is not an SDP session description (it must start with v=0, o=, s=, t=): {e}"
        ))
    })?;
    let session_direction = direction(&desc.attributes);
    let mut out = Vec::new();
    for media in &desc.media_descriptions {
        if let Some(section) = section(media, &session_direction)? {
            out.push(section);
        }
    }
    for kind in MediaKind::ALL {
        if out.iter().filter(|s| s.kind == kind).count() > 1 {
            return Err(err(format!(
                "the offer has more than one {kind} section; send at most one audio and one video track"
            )));
        }
    }
    Ok(out)
}

/// The direction attribute among `attributes`, if any.
fn direction(attributes: &[Attribute]) -> Direction {
    attributes
        .iter()
        .map(|a| Direction::new(&a.key))
        .find(|d| *d != Direction::Unspecified)
        .unwrap_or_default()
}

/// One `m=audio` or `m=video` section; `None` for any other kind.
fn section(media: &MediaDescription, session: &Direction) -> Result<Option<Section>, SdpError> {
    let name = &media.media_name;
    let kind = match name.media.as_str() {
        "audio" => MediaKind::Audio,
        "video" => MediaKind::Video,
        _ => return Ok(None),
    };
    let payload_types = name
        .formats
        .iter()
        .map(|f| f.parse::<u8>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| {
            err(format!(
                "bad payload type in `m={} {}`",
                name.media,
                name.formats.join(" ")
            ))
        })?;
    let direction = match direction(&media.attributes) {
        Direction::Unspecified if *session != Direction::Unspecified => session.clone(),
        Direction::Unspecified => Direction::SendRecv,
        own => own,
    };
    let mut codecs: Vec<SdpCodec> = media
        .codecs()
        .into_values()
        .filter(|c| !c.name.is_empty())
        .map(|c| SdpCodec {
            payload_type: c.payload_type,
            channels: match (c.encoding_parameters.parse().ok(), kind) {
                (Some(n), _) => n,
                (None, MediaKind::Audio) => 1,
                (None, MediaKind::Video) => 0,
            },
            name: c.name,
            clock_rate: c.clock_rate,
            fmtp: c.fmtp,
        })
        .collect();
    codecs.sort_by_key(|c| c.payload_type);
    Ok(Some(Section {
        kind,
        // The parser reads the port as a u16.
        port: u16::try_from(name.port.value).unwrap_or(0),
        direction,
        payload_types,
        codecs,
    }))
}

/// What a WHIP or WHEP client's offer asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The kinds the offer sends (WHIP) or receives (WHEP), in SDP order.
    pub kinds: Vec<MediaKind>,
}

/// Checks a WHIP offer: it must send audio or video.
pub fn publish_offer(sdp: &str) -> Result<Offer, SdpError> {
    offer(
        sdp,
        sends,
        "the offer sends no audio or video (a WHIP offer has sendonly audio and/or video sections)",
    )
}

/// Checks a WHEP offer: it must receive audio or video.
pub fn play_offer(sdp: &str) -> Result<Offer, SdpError> {
    offer(
        sdp,
        receives,
        "the offer receives no audio or video (a WHEP offer has recvonly audio and/or video sections)",
    )
}

/// The kinds of the open sections whose direction is `wanted`; refused
/// with `none` when there are none.
fn offer(sdp: &str, wanted: fn(&Direction) -> bool, none: &str) -> Result<Offer, SdpError> {
    let kinds: Vec<MediaKind> = sections(sdp)?
        .iter()
        .filter(|s| s.port != 0 && wanted(&s.direction))
        .map(|s| s.kind)
        .collect();
    if kinds.is_empty() {
        return Err(err(none));
    }
    Ok(Offer { kinds })
}

/// The codec each accepted section of our answer settled on.
pub fn answer_codecs(answer: &str) -> Result<Vec<(MediaKind, SdpCodec)>, SdpError> {
    Ok(sections(answer)?
        .into_iter()
        .filter(|s| s.port != 0 && s.direction != Direction::Inactive)
        .filter_map(|s| s.first_codec().cloned().map(|c| (s.kind, c)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of OBS Studio's WHIP offer: H.264 and Opus, sendonly,
    /// every candidate included (non-trickle).
    const OBS_OFFER: &str = "v=0\r\n\
        o=- 1 1 IN IP4 0.0.0.0\r\n\
        s=-\r\n\
        t=0 0\r\n\
        a=group:BUNDLE 0 1\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
        c=IN IP4 0.0.0.0\r\n\
        a=mid:0\r\n\
        a=sendonly\r\n\
        a=rtpmap:111 opus/48000/2\r\n\
        a=fmtp:111 minptime=10;useinbandfec=1\r\n\
        a=candidate:1 1 udp 2130706431 192.0.2.4 50000 typ host\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
        c=IN IP4 0.0.0.0\r\n\
        a=mid:1\r\n\
        a=sendonly\r\n\
        a=rtpmap:96 H264/90000\r\n\
        a=fmtp:96 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
        a=rtcp-fb:96 nack\r\n\
        a=rtcp-fb:96 nack pli\r\n";

    #[test]
    fn an_obs_offer_sends_audio_and_video() {
        assert_eq!(
            publish_offer(OBS_OFFER).unwrap().kinds,
            [MediaKind::Audio, MediaKind::Video]
        );
        assert!(
            play_offer(OBS_OFFER).is_err(),
            "a sendonly offer receives nothing"
        );
        let s = sections(OBS_OFFER).unwrap();
        let h264 = s[1].first_codec().unwrap();
        assert_eq!(h264.name, "H264");
        assert_eq!(h264.mime_type(MediaKind::Video), "video/H264");
        assert_eq!(h264.clock_rate, 90_000);
        assert!(h264.fmtp.contains("packetization-mode=1"));
        let opus = s[0].first_codec().unwrap();
        assert_eq!((opus.clock_rate, opus.channels), (48_000, 2));
    }

    /// The lines every session description starts with.
    fn session(body: &str) -> String {
        format!("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n{body}")
    }

    #[test]
    fn directions_default_and_inherit() {
        let lf = "v=0\no=- 1 1 IN IP4 0.0.0.0\ns=-\nt=0 0\na=recvonly\nm=video 9 UDP/TLS/RTP/SAVPF 96\na=rtpmap:96 VP8/90000\nm=audio 9 UDP/TLS/RTP/SAVPF 0\na=sendrecv\n";
        let s = sections(lf).unwrap();
        assert_eq!(s.len(), 2, "LF line ends are read too");
        assert_eq!(
            s[0].direction,
            Direction::RecvOnly,
            "from the session level"
        );
        assert_eq!(s[1].direction, Direction::SendRecv, "its own line wins");
        assert_eq!(s[1].first_codec(), None, "no rtpmap for PT 0 here");
        assert_eq!(
            play_offer(lf).unwrap().kinds,
            [MediaKind::Video, MediaKind::Audio]
        );
    }

    #[test]
    fn bad_offers_are_refused_with_a_reason() {
        for (sdp, says) in [
            (String::new(), "not an SDP"),
            ("hello".to_string(), "not an SDP"),
            (
                "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n".to_string(),
                "not an SDP",
            ),
            (
                session("m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"),
                "no audio or video",
            ),
            (
                session("m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=inactive\r\n"),
                "no audio or video",
            ),
            (
                session("m=video 0 UDP/TLS/RTP/SAVPF 96\r\n"),
                "no audio or video",
            ),
            (session("m=video x UDP/TLS/RTP/SAVPF 96\r\n"), "not an SDP"),
            (
                session("m=video 9 UDP/TLS/RTP/SAVPF 960\r\n"),
                "bad payload type",
            ),
            (
                session("m=video 9 UDP/TLS/RTP/SAVPF 96\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"),
                "more than one video",
            ),
        ] {
            let e = publish_offer(&sdp).unwrap_err();
            assert!(e.0.contains(says), "{sdp:?}: {e}");
        }
    }

    #[test]
    fn an_answer_names_its_codecs() {
        let answer = session(
            "m=audio 9 UDP/TLS/RTP/SAVPF 109\r\na=recvonly\r\na=rtpmap:109 opus/48000/2\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 102 96\r\na=recvonly\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:102 H264/90000\r\n\
            a=fmtp:102 packetization-mode=1\r\nm=video 0 UDP/TLS/RTP/SAVPF 0\r\n",
        );
        // Two video sections are refused as an offer would be.
        assert!(answer_codecs(&answer).is_err());
        let answer = answer.replace("m=video 0 UDP/TLS/RTP/SAVPF 0\r\n", "");
        let codecs = answer_codecs(&answer).unwrap();
        assert_eq!(codecs.len(), 2);
        assert_eq!(codecs[0].0, MediaKind::Audio);
        assert_eq!(codecs[1].1.name, "H264", "the first payload type wins");
        assert_eq!(codecs[1].1.payload_type, 102);
    }
}
