//! The exec/attach stream, sans I/O: what each side sends and when, once the
//! device accepted the [`ExecRequest`](crate::api::ExecRequest). aranya
//! drives a [`Client`], arhat a [`Device`]; each turns what arrived into what
//! to do and what to send, and does no I/O itself.
//!
//! aranya → arhat: at most one `resize` (the terminal's first size), then
//! `start`; then `stdin`, `resize` and one `stdin_closed` in any order. aranya
//! finishes its side once it saw the exit, or drops the stream (a reset) when
//! its client left, which ends the process.
//!
//! arhat → aranya: `stdout` and `stderr` in messages of at most [`CHUNK`]
//! bytes, then one `exit`, then it finishes its side and holds the stream
//! until aranya finishes too: dropping it sooner would reset it, and a reset
//! discards what is still in flight (the exit).

use std::time::Duration;

use bytes::Bytes;

use crate::api::{
    ExecInput, ExecOutput, ExitStatus, TerminalSize, exec_input::Kind as In,
    exec_output::Kind as Out,
};

/// Largest output message: a few session frames.
pub const CHUNK: usize = 32 * 1024;

/// How long aranya waits for a terminal's first size before it starts the
/// process anyway. kubectl sends the size on its own channel, which can trail
/// the first keystrokes; a process started before it would see a 0x0
/// terminal (a shell's first `stty size` reads `0 0`).
pub const FIRST_SIZE: Duration = Duration::from_secs(1);

fn input(kind: In) -> ExecInput {
    ExecInput { kind: Some(kind) }
}

fn message(kind: Out) -> ExecOutput {
    ExecOutput { kind: Some(kind) }
}

/// aranya's side of one exec or attach stream: what it sends. What it
/// receives is read by a [`ClientReceiver`], so each direction can have its
/// own task.
#[derive(Debug)]
pub struct Client {
    started: bool,
}

/// What aranya reads from the device on an exec or attach stream.
#[derive(Debug, Default)]
pub struct ClientReceiver {
    ended: bool,
}

/// What a device's message means to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    Stdout(Bytes),
    Stderr(Bytes),
    /// The last event: how the process ended.
    Ended(Ending),
}

/// How an exec ended, as the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Exited(i32),
    /// It could not run, or the stream ended without an exit status.
    Failed(String),
}

impl Client {
    /// A client, and what to send now: `start`, unless the process must
    /// first learn its terminal's size (`awaits_size`: a terminal whose
    /// client sends sizes), which [`Client::resize`] or, after
    /// [`FIRST_SIZE`], [`Client::size_wait_over`] then sends.
    pub fn new(awaits_size: bool) -> (Client, Option<ExecInput>) {
        let mut client = Client { started: false };
        let now = (!awaits_size).then(|| client.start());
        (client, now)
    }

    fn start(&mut self) -> ExecInput {
        self.started = true;
        input(In::Start(true))
    }

    /// Whether the process was told to start: from then on the client's
    /// input is carried.
    pub fn started(&self) -> bool {
        self.started
    }

    /// The client's terminal changed size. The first size goes before
    /// `start`, so the process starts at it.
    pub fn resize(&mut self, width: u16, height: u16) -> Vec<ExecInput> {
        let size = input(In::Resize(TerminalSize {
            width: u32::from(width),
            height: u32::from(height),
        }));
        if self.started {
            vec![size]
        } else {
            vec![size, self.start()]
        }
    }

    /// No first size came in time (or will come): start without one.
    pub fn size_wait_over(&mut self) -> Option<ExecInput> {
        (!self.started).then(|| self.start())
    }

    pub fn stdin(&self, data: Bytes) -> ExecInput {
        input(In::Stdin(data))
    }

    pub fn stdin_closed(&self) -> ExecInput {
        input(In::StdinClosed(true))
    }
}

impl ClientReceiver {
    /// What the device's next message means; `None` is the device's end of
    /// the stream. After [`ClientEvent::Ended`] nothing more comes.
    pub fn receive(&mut self, message: Option<ExecOutput>) -> Option<ClientEvent> {
        if self.ended {
            return None;
        }
        let event = match message.map(|m| m.kind) {
            Some(Some(Out::Stdout(data))) => ClientEvent::Stdout(data),
            Some(Some(Out::Stderr(data))) => ClientEvent::Stderr(data),
            Some(Some(Out::Exit(exit))) if !exit.error.is_empty() => {
                ClientEvent::Ended(Ending::Failed(exit.error))
            }
            Some(Some(Out::Exit(exit))) => ClientEvent::Ended(Ending::Exited(exit.code)),
            // A kind this build does not know: skipped.
            Some(None) => return None,
            None => ClientEvent::Ended(Ending::Failed(
                "the edge device ended the session without an exit status".into(),
            )),
        };
        self.ended = matches!(event, ClientEvent::Ended(_));
        Some(event)
    }
}

/// arhat's side of one exec or attach stream: what it reads. What it sends
/// is [`output`], then one [`exit`].
#[derive(Debug, Default)]
pub struct Device {
    phase: Phase,
}

#[derive(Debug, Default)]
enum Phase {
    /// Waiting for `start`.
    #[default]
    Waiting,
    /// Waiting for `start`, with the terminal size that came before it.
    Sized(TerminalSize),
    Running,
}

/// What aranya's message asks of the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceEvent {
    /// Run the process, at this terminal size if one came.
    Start {
        size: Option<TerminalSize>,
    },
    Stdin(Bytes),
    /// End of stdin: close the process's.
    StdinClosed,
    Resize(TerminalSize),
    /// aranya finished its side: no more input comes (stdin, if still
    /// open, is closed).
    InputEnded,
    /// The stream ended, or broke the sequence, before `start`: run nothing.
    Abandoned,
}

impl Device {
    /// What aranya's next message asks; `None` is aranya's end of its side.
    /// `None` back means nothing to do (a size held for the start).
    pub fn receive(&mut self, message: Option<ExecInput>) -> Option<DeviceEvent> {
        let kind = message.and_then(|m| m.kind);
        match (&self.phase, kind) {
            (Phase::Waiting | Phase::Sized(_), Some(In::Resize(size))) => {
                self.phase = Phase::Sized(size);
                None
            }
            (Phase::Waiting | Phase::Sized(_), Some(In::Start(_))) => {
                let size = match std::mem::replace(&mut self.phase, Phase::Running) {
                    Phase::Sized(size) => Some(size),
                    _ => None,
                };
                Some(DeviceEvent::Start { size })
            }
            // The client never got ready.
            (Phase::Waiting | Phase::Sized(_), _) => Some(DeviceEvent::Abandoned),
            (_, Some(In::Stdin(data))) => Some(DeviceEvent::Stdin(data)),
            (_, Some(In::StdinClosed(_))) => Some(DeviceEvent::StdinClosed),
            (_, Some(In::Resize(size))) => Some(DeviceEvent::Resize(size)),
            (_, None) => Some(DeviceEvent::InputEnded),
            (_, Some(In::Start(_))) => None,
        }
    }
}

/// The process's output as the device sends it: messages of at most
/// [`CHUNK`] bytes.
pub fn output(stderr: bool, data: &[u8]) -> Vec<ExecOutput> {
    data.chunks(CHUNK)
        .map(|chunk| {
            let chunk = Bytes::copy_from_slice(chunk);
            message(if stderr {
                Out::Stderr(chunk)
            } else {
                Out::Stdout(chunk)
            })
        })
        .collect()
}

/// The device's last message: the process exited with `code`, or (`Err`)
/// could not be run or waited for.
pub fn exit(result: Result<i32, String>) -> ExecOutput {
    let (code, error) = match result {
        Ok(code) => (code, String::new()),
        Err(error) => (0, error),
    };
    message(Out::Exit(ExitStatus { code, error }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(messages: &[ExecInput]) -> Vec<In> {
        messages.iter().filter_map(|m| m.kind.clone()).collect()
    }

    fn size(width: u32, height: u32) -> TerminalSize {
        TerminalSize { width, height }
    }

    #[test]
    fn client_without_a_terminal_starts_at_once() {
        let (client, now) = Client::new(false);
        assert!(client.started());
        assert_eq!(now.and_then(|m| m.kind), Some(In::Start(true)));
    }

    #[test]
    fn the_first_size_goes_before_the_start_and_later_ones_alone() {
        let (mut client, now) = Client::new(true);
        assert!(now.is_none() && !client.started());
        assert_eq!(
            kinds(&client.resize(80, 24)),
            [In::Resize(size(80, 24)), In::Start(true)]
        );
        assert_eq!(kinds(&client.resize(100, 30)), [In::Resize(size(100, 30))]);
        assert!(client.size_wait_over().is_none());
    }

    #[test]
    fn a_size_that_never_comes_starts_the_process_once() {
        let (mut client, _) = Client::new(true);
        assert_eq!(
            client.size_wait_over().and_then(|m| m.kind),
            Some(In::Start(true))
        );
        assert!(client.size_wait_over().is_none());
        assert_eq!(kinds(&client.resize(80, 24)), [In::Resize(size(80, 24))]);
    }

    #[test]
    fn the_client_sees_output_then_one_ending() {
        let mut receiver = ClientReceiver::default();
        let out = output(false, b"hi");
        let err = output(true, b"oops");
        let exit = exit(Ok(3));
        let events: Vec<_> = out
            .into_iter()
            .chain(err)
            .chain([exit.clone(), exit])
            .filter_map(|m| receiver.receive(Some(m)))
            .collect();
        assert_eq!(
            events,
            [
                ClientEvent::Stdout(Bytes::from_static(b"hi")),
                ClientEvent::Stderr(Bytes::from_static(b"oops")),
                ClientEvent::Ended(Ending::Exited(3)),
            ]
        );
        assert_eq!(receiver.receive(None), None);
    }

    #[test]
    fn a_stream_that_ends_without_an_exit_is_a_failure() {
        let mut receiver = ClientReceiver::default();
        assert!(matches!(
            receiver.receive(None),
            Some(ClientEvent::Ended(Ending::Failed(_)))
        ));
        let exit = exit(Err("no such container".into()));
        let mut receiver = ClientReceiver::default();
        assert_eq!(
            receiver.receive(Some(exit)),
            Some(ClientEvent::Ended(Ending::Failed(
                "no such container".into()
            )))
        );
    }

    #[test]
    fn the_device_starts_at_the_size_that_came_first() {
        let (mut client, _) = Client::new(true);
        let mut device = Device::default();
        let events: Vec<_> = client
            .resize(120, 40)
            .into_iter()
            .chain([client.stdin(Bytes::from_static(b"ls\n"))])
            .chain(client.resize(90, 20))
            .chain([client.stdin_closed()])
            .filter_map(|m| device.receive(Some(m)))
            .collect();
        assert_eq!(
            events,
            [
                DeviceEvent::Start {
                    size: Some(size(120, 40))
                },
                DeviceEvent::Stdin(Bytes::from_static(b"ls\n")),
                DeviceEvent::Resize(size(90, 20)),
                DeviceEvent::StdinClosed,
            ]
        );
        assert_eq!(device.receive(None), Some(DeviceEvent::InputEnded));
    }

    #[test]
    fn input_before_the_start_abandons_the_exec() {
        let mut device = Device::default();
        assert_eq!(
            device.receive(Some(input(In::Stdin(Bytes::from_static(b"x"))))),
            Some(DeviceEvent::Abandoned)
        );
        let mut device = Device::default();
        assert_eq!(device.receive(None), Some(DeviceEvent::Abandoned));
    }

    #[test]
    fn output_comes_in_chunks() {
        let big = vec![7u8; CHUNK * 2 + 1];
        let sizes: Vec<usize> = output(false, &big)
            .into_iter()
            .filter_map(|m| match m.kind {
                Some(Out::Stdout(data)) => Some(data.len()),
                _ => None,
            })
            .collect();
        assert_eq!(sizes, [CHUNK, CHUNK, 1]);
    }
}
