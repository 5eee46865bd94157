//! ESL commands callcode sends, encoded into bytes. Sans-IO.
//!
//! A command is a first line, optional `Name: value` lines, and a blank line (fixture README facts
//! 2, 5, 14). Every argument is checked for line breaks before it is written: a newline inside an
//! argument would end the command early and let the rest be read as another command.

use bytes::{BufMut, BytesMut};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("argument contains a line break: {0:?}")]
    LineBreak(String),
}

/// What callcode asks of FreeSWITCH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    Auth(&'a str),
    /// `event plain A B C`: adds to the subscription (fact 15).
    Events {
        format: &'a str,
        names: &'a [&'a str],
    },
    NixEvent(&'a [&'a str]),
    Filter {
        header: &'a str,
        value: &'a str,
    },
    Api(&'a str),
    /// Our own `Job-UUID` so the result can be matched before the reply arrives (fact 5).
    BgApi {
        command: &'a str,
        job_uuid: &'a str,
    },
    /// `sendmsg [<uuid>]` execute; `Event-UUID` comes back as `Application-UUID` (fact 14).
    Execute {
        uuid: Option<&'a str>,
        app: &'a str,
        arg: &'a str,
        event_uuid: &'a str,
    },
    /// `sendmsg [<uuid>]` hangup with a FreeSWITCH cause name.
    HangupMsg {
        uuid: Option<&'a str>,
        cause: &'a str,
    },
    /// Outbound mode: the first thing said on a new connection.
    Connect,
    /// Outbound mode: events of this channel only (plain, as in -01-).
    MyEvents,
    /// Keep the socket open after hang-up until the last events are sent.
    Linger,
    Exit,
}

fn check(arg: &str) -> Result<&str, EncodeError> {
    if arg.contains(['\n', '\r']) {
        Err(EncodeError::LineBreak(arg.to_string()))
    } else {
        Ok(arg)
    }
}

impl Command<'_> {
    /// The caller-supplied parts, each of which must stay on its line.
    fn arguments(&self) -> Vec<&str> {
        match self {
            Command::Auth(a) | Command::Api(a) => vec![a],
            Command::Events { format, names } => {
                let mut v = vec![*format];
                v.extend_from_slice(names);
                v
            }
            Command::NixEvent(names) => names.to_vec(),
            Command::Filter { header, value } => vec![header, value],
            Command::BgApi { command, job_uuid } => vec![command, job_uuid],
            Command::Execute {
                uuid,
                app,
                arg,
                event_uuid,
            } => vec![uuid.unwrap_or(""), app, arg, event_uuid],
            Command::HangupMsg { uuid, cause } => vec![uuid.unwrap_or(""), cause],
            Command::Connect | Command::MyEvents | Command::Linger | Command::Exit => vec![],
        }
    }

    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        for a in self.arguments() {
            check(a)?;
        }
        let sendmsg = |uuid: &Option<&str>| match uuid {
            Some(u) => format!("sendmsg {u}"),
            None => "sendmsg".to_string(),
        };
        let s = match self {
            Command::Auth(password) => format!("auth {password}"),
            Command::Events { format, names } => format!("event {format} {}", names.join(" ")),
            Command::NixEvent(names) => format!("nixevent {}", names.join(" ")),
            Command::Filter { header, value } => format!("filter {header} {value}"),
            Command::Api(cmd) => format!("api {cmd}"),
            Command::BgApi { command, job_uuid } => format!("bgapi {command}\nJob-UUID: {job_uuid}"),
            Command::Execute {
                uuid,
                app,
                arg,
                event_uuid,
            } => format!(
                "{}\ncall-command: execute\nexecute-app-name: {app}\nexecute-app-arg: {arg}\nevent-lock: true\nEvent-UUID: {event_uuid}",
                sendmsg(uuid)
            ),
            Command::HangupMsg { uuid, cause } => format!(
                "{}\ncall-command: hangup\nhangup-cause: {cause}",
                sendmsg(uuid)
            ),
            Command::Connect => "connect".to_string(),
            Command::MyEvents => "myevents".to_string(),
            Command::Linger => "linger".to_string(),
            Command::Exit => "exit".to_string(),
        };
        out.reserve(s.len() + 2);
        out.put_slice(s.as_bytes());
        out.put_slice(b"\n\n");
        Ok(())
    }

    pub fn to_bytes(&self) -> Result<BytesMut, EncodeError> {
        let mut b = BytesMut::new();
        self.encode(&mut b)?;
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::super::codec::{decode_command, Limits};
    use super::*;

    #[test]
    fn bytes_match_the_capture() {
        // esl-inbound-10 tx: the first lines callcode's commands must equal byte for byte.
        assert_eq!(
            &Command::Auth("ClueCon").to_bytes().unwrap()[..],
            b"auth ClueCon\n\n"
        );
        let sendmsg = Command::Execute {
            uuid: Some("32a8c80a-0071-4228-9ab7-c5513105641a"),
            app: "playback",
            arg: "/opt/fs/sounds/hello.wav",
            event_uuid: "app-1",
        }
        .to_bytes()
        .unwrap();
        assert_eq!(
            &sendmsg[..],
            &b"sendmsg 32a8c80a-0071-4228-9ab7-c5513105641a\ncall-command: execute\nexecute-app-name: playback\nexecute-app-arg: /opt/fs/sounds/hello.wav\nevent-lock: true\nEvent-UUID: app-1\n\n"[..]
        );
        assert_eq!(
            &Command::HangupMsg {
                uuid: Some("u"),
                cause: "NORMAL_CLEARING"
            }
            .to_bytes()
            .unwrap()[..],
            b"sendmsg u\ncall-command: hangup\nhangup-cause: NORMAL_CLEARING\n\n"
        );
    }

    #[test]
    fn a_line_break_in_an_argument_is_refused() {
        assert!(Command::Api("status\n\nexit").to_bytes().is_err());
        assert!(Command::BgApi {
            command: "originate x",
            job_uuid: "a\rb"
        }
        .to_bytes()
        .is_err());
    }

    #[test]
    fn every_command_round_trips_through_the_command_decoder() {
        let names = ["CHANNEL_ANSWER", "CUSTOM", "sofia::notify_watched_header"];
        let cases = [
            Command::Auth("pw"),
            Command::Events {
                format: "plain",
                names: &names,
            },
            Command::NixEvent(&names[..1]),
            Command::Filter {
                header: "Unique-ID",
                value: "u",
            },
            Command::Api("uuid_exists u"),
            Command::BgApi {
                command: "originate {a=b}sofia/gateway/g/1 '&socket(127.0.0.1:8084 async full)'",
                job_uuid: "j",
            },
            Command::Execute {
                uuid: None,
                app: "playback",
                arg: "/s/en/1.wav",
                event_uuid: "e",
            },
            Command::HangupMsg {
                uuid: Some("u"),
                cause: "NORMAL_CLEARING",
            },
            Command::Connect,
            Command::MyEvents,
            Command::Linger,
            Command::Exit,
        ];
        let mut wire = BytesMut::new();
        for c in &cases {
            c.encode(&mut wire).unwrap();
        }
        for c in &cases {
            let f = decode_command(&mut wire, Limits::default())
                .unwrap()
                .unwrap();
            let mut again = BytesMut::from(&f.line[..]);
            for (n, v) in f.headers.iter() {
                again.extend_from_slice(b"\n");
                again.extend_from_slice(n);
                again.extend_from_slice(b": ");
                again.extend_from_slice(v);
            }
            again.extend_from_slice(b"\n\n");
            assert_eq!(again, c.to_bytes().unwrap(), "{c:?}");
        }
        assert!(wire.is_empty());
    }
}
