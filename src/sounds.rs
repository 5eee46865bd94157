//! The recorded voice prompts ("your code is", digits 0-9) for each configured language.
//!
//! [`Sounds::load`] runs once at start-up: it checks that every language directory holds all eleven
//! files of [`Prompt::ALL`] and that each is a playable telephony WAV (RIFF, PCM, mono, 8000 Hz,
//! 16-bit, non-empty, at most five seconds), and refuses with an error naming the file otherwise. It
//! keeps only paths and durations: the engine uses the durations to know how long a spoken code lasts,
//! and hands the paths to the PBX, which does the playing.
//!
//! What this module must not do: play, stream, decode or transcode audio; touch the disk after
//! `load` (lookups are plain memory reads, safe on the hot path); or reload files behind the
//! engine's back. Replacing recordings means restarting the process. See `sounds/README.md`.

use std::collections::HashSet;
use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::call::Prompt;

/// Required sample rate, in Hz.
pub const SAMPLE_RATE: u32 = 8000;
/// Required channel count.
pub const CHANNELS: u16 = 1;
/// Required bits per sample.
pub const BITS_PER_SAMPLE: u16 = 16;
/// Longest accepted prompt.
pub const MAX_DURATION: Duration = Duration::from_secs(5);

const PROMPTS: usize = Prompt::ALL.len();

/// Every configured language's prompts, validated.
#[derive(Debug, Clone)]
pub struct Sounds {
    languages: Vec<Language>,
}

/// One language directory: `<root>/<name>/` holding `<stem>.wav` for every [`Prompt`].
#[derive(Debug, Clone)]
pub struct Language {
    pub name: Arc<str>,
    /// Absolute (not canonicalised) path of the language directory.
    pub dir: PathBuf,
    /// Sample count of each prompt (at [`SAMPLE_RATE`]), indexed by [`Prompt::index`].
    samples: [u32; PROMPTS],
}

/// Why the prompts could not be loaded. Every file-level variant names the offending path.
#[derive(Debug, thiserror::Error)]
pub enum SoundsError {
    #[error("invalid language name {name:?}: must be a plain directory name")]
    InvalidLanguage { name: String },
    #[error("language {name:?} is listed more than once")]
    DuplicateLanguage { name: String },
    #[error("{}: language directory not found", path.display())]
    MissingDir { path: PathBuf },
    #[error("{}: prompt file missing", path.display())]
    Missing { path: PathBuf },
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: not a valid WAV file: {reason}", path.display())]
    NotWav { path: PathBuf, reason: String },
    #[error("{}: not PCM: {found}, expected 16-bit signed integer PCM", path.display())]
    NotPcm { path: PathBuf, found: String },
    #[error("{}: {found} channels, expected {CHANNELS} (mono)", path.display())]
    Channels { path: PathBuf, found: u16 },
    #[error("{}: sample rate {found} Hz, expected {SAMPLE_RATE} Hz", path.display())]
    SampleRate { path: PathBuf, found: u32 },
    #[error("{}: {found} bits per sample, expected {BITS_PER_SAMPLE}", path.display())]
    BitsPerSample { path: PathBuf, found: u16 },
    #[error("{}: contains no samples", path.display())]
    Empty { path: PathBuf },
    #[error("{}: truncated: header promises {expected} bytes of audio, file holds {found}", path.display())]
    Truncated {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("{}: {:.2} s long, at most {} s allowed", path.display(), duration.as_secs_f64(), MAX_DURATION.as_secs())]
    TooLong { path: PathBuf, duration: Duration },
}

impl SoundsError {
    /// The file or directory the error is about, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            SoundsError::InvalidLanguage { .. } | SoundsError::DuplicateLanguage { .. } => None,
            SoundsError::MissingDir { path }
            | SoundsError::Missing { path }
            | SoundsError::Io { path, .. }
            | SoundsError::NotWav { path, .. }
            | SoundsError::NotPcm { path, .. }
            | SoundsError::Channels { path, .. }
            | SoundsError::SampleRate { path, .. }
            | SoundsError::BitsPerSample { path, .. }
            | SoundsError::Empty { path }
            | SoundsError::Truncated { path, .. }
            | SoundsError::TooLong { path, .. } => Some(path),
        }
    }
}

impl Sounds {
    /// Loads and validates `<root>/<language>/<stem>.wav` for every language and every prompt.
    /// Stops at the first problem. A relative `root` is made absolute against the current
    /// directory, so [`Language::path`] can be handed to a PBX as is.
    pub fn load(root: &Path, languages: &[&str]) -> Result<Sounds, SoundsError> {
        let root = std::path::absolute(root).map_err(|source| SoundsError::Io {
            path: root.to_path_buf(),
            source,
        })?;
        let mut seen = HashSet::new();
        let mut loaded = Vec::with_capacity(languages.len());
        for &name in languages {
            if !is_plain_name(name) {
                return Err(SoundsError::InvalidLanguage {
                    name: name.to_owned(),
                });
            }
            if !seen.insert(name) {
                return Err(SoundsError::DuplicateLanguage {
                    name: name.to_owned(),
                });
            }
            loaded.push(Language::load(&root, name)?);
        }
        Ok(Sounds { languages: loaded })
    }

    pub fn language(&self, name: &str) -> Option<&Language> {
        self.languages.iter().find(|l| &*l.name == name)
    }

    /// Languages in the order they were given to [`Sounds::load`].
    pub fn languages(&self) -> impl Iterator<Item = &Language> {
        self.languages.iter()
    }
}

impl Language {
    fn load(root: &Path, name: &str) -> Result<Language, SoundsError> {
        let dir = root.join(name);
        if !dir.is_dir() {
            return Err(SoundsError::MissingDir { path: dir });
        }
        let mut samples = [0; PROMPTS];
        for prompt in Prompt::ALL {
            samples[prompt.index()] = check_file(&file_path(&dir, prompt))?;
        }
        Ok(Language {
            name: Arc::from(name),
            dir,
            samples,
        })
    }

    /// How long the prompt plays, from its sample count and rate.
    pub fn duration(&self, prompt: Prompt) -> Duration {
        samples_to_duration(self.samples[prompt.index()])
    }

    /// Every prompt's duration in whole milliseconds (rounded up), indexed by [`Prompt::index`].
    pub fn durations_ms(&self) -> [u32; PROMPTS] {
        // At most 5 s each (checked in `load`), so this cannot overflow.
        self.samples
            .map(|n| (u64::from(n) * 1000).div_ceil(u64::from(SAMPLE_RATE)) as u32)
    }

    /// `<dir>/<stem>.wav`.
    pub fn path(&self, prompt: Prompt) -> PathBuf {
        file_path(&self.dir, prompt)
    }
}

fn file_path(dir: &Path, prompt: Prompt) -> PathBuf {
    dir.join(format!("{}.wav", prompt.file_stem()))
}

fn samples_to_duration(samples: u32) -> Duration {
    Duration::from_nanos(u64::from(samples) * 1_000_000_000 / u64::from(SAMPLE_RATE))
}

/// A single normal path component: no separators, not `.`/`..`, not empty.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

/// Validates one prompt file and returns its length in samples.
fn check_file(path: &Path) -> Result<u32, SoundsError> {
    // Prompts are tens of kilobytes; reading the whole file lets every parse failure below be a
    // format problem rather than an I/O one, and makes the truncation check a length comparison.
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(SoundsError::Missing {
                path: path.to_path_buf(),
            })
        }
        Err(source) => return Err(io_error(path, source)),
    };
    let file_len = bytes.len() as u64;
    let reader = hound::WavReader::new(Cursor::new(bytes)).map_err(|e| match e {
        // Reading from memory only fails by running out of bytes.
        hound::Error::IoError(_) => SoundsError::NotWav {
            path: path.to_path_buf(),
            reason: "file ends inside the header".to_owned(),
        },
        hound::Error::Unsupported => SoundsError::NotPcm {
            path: path.to_path_buf(),
            found: "compressed or unsupported encoding".to_owned(),
        },
        other => SoundsError::NotWav {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    })?;

    let spec = reader.spec();
    if spec.sample_format != hound::SampleFormat::Int {
        return Err(SoundsError::NotPcm {
            path: path.to_path_buf(),
            found: format!("{}-bit IEEE float", spec.bits_per_sample),
        });
    }
    if spec.channels != CHANNELS {
        return Err(SoundsError::Channels {
            path: path.to_path_buf(),
            found: spec.channels,
        });
    }
    if spec.sample_rate != SAMPLE_RATE {
        return Err(SoundsError::SampleRate {
            path: path.to_path_buf(),
            found: spec.sample_rate,
        });
    }
    if spec.bits_per_sample != BITS_PER_SAMPLE {
        return Err(SoundsError::BitsPerSample {
            path: path.to_path_buf(),
            found: spec.bits_per_sample,
        });
    }
    let samples = reader.duration();
    if samples == 0 {
        return Err(SoundsError::Empty {
            path: path.to_path_buf(),
        });
    }
    let duration = samples_to_duration(samples);
    if duration > MAX_DURATION {
        return Err(SoundsError::TooLong {
            path: path.to_path_buf(),
            duration,
        });
    }
    // hound trusts the data chunk header; make sure the audio is actually there.
    let data_start = reader.into_inner().position();
    let expected = u64::from(samples) * u64::from(BITS_PER_SAMPLE / 8);
    let found = file_len.saturating_sub(data_start);
    if found < expected {
        return Err(SoundsError::Truncated {
            path: path.to_path_buf(),
            expected,
            found,
        });
    }
    Ok(samples)
}

fn io_error(path: &Path, source: io::Error) -> SoundsError {
    SoundsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/sounds");

    fn spec(channels: u16, sample_rate: u32, bits_per_sample: u16) -> hound::WavSpec {
        hound::WavSpec {
            channels,
            sample_rate,
            bits_per_sample,
            sample_format: hound::SampleFormat::Int,
        }
    }

    /// Writes `frames` frames of a quiet square wave with the given format.
    fn write_wav(path: &Path, spec: hound::WavSpec, frames: u32) {
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        for i in 0..frames * u32::from(spec.channels) {
            let v = if (i / 20) % 2 == 0 { 50 } else { -50 };
            match spec.bits_per_sample {
                8 => w.write_sample(v as i8).unwrap(),
                _ => w.write_sample(v as i16).unwrap(),
            }
        }
        w.finalize().unwrap();
    }

    /// A temporary root with a complete, valid `xx` language (each prompt 0.5 s).
    fn valid_root() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("xx");
        std::fs::create_dir(&dir).unwrap();
        for prompt in Prompt::ALL {
            write_wav(&file_path(&dir, prompt), spec(1, 8000, 16), 4000);
        }
        (tmp, dir)
    }

    fn load_err(tmp: &tempfile::TempDir) -> SoundsError {
        Sounds::load(tmp.path(), &["xx"]).expect_err("load should fail")
    }

    #[test]
    fn shipped_sounds_load_with_plausible_durations() {
        let sounds = Sounds::load(Path::new(SHIPPED), &["ru", "en"]).unwrap();
        let names: Vec<&str> = sounds.languages().map(|l| &*l.name).collect();
        assert_eq!(names, ["ru", "en"]);
        for name in ["ru", "en"] {
            let lang = sounds.language(name).unwrap();
            assert!(lang.dir.is_absolute());
            assert!(lang.dir.ends_with(name));
            let ms = lang.durations_ms();
            for prompt in Prompt::ALL {
                let d = lang.duration(prompt);
                assert!(
                    d >= Duration::from_millis(100) && d <= Duration::from_secs(2),
                    "{name}/{}: implausible duration {d:?}",
                    prompt.file_stem()
                );
                assert!(lang.path(prompt).is_file());
                assert_eq!(ms[prompt.index()], d.as_nanos().div_ceil(1_000_000) as u32);
            }
            // "Your code is" is a phrase; it should outlast any single digit.
            let intro = lang.duration(Prompt::YourCodeIs);
            assert!((0..10).all(|d| lang.duration(Prompt::Digit(d)) < intro));
        }
        assert!(sounds.language("de").is_none());
    }

    #[test]
    fn path_is_dir_plus_stem_wav() {
        let (tmp, dir) = valid_root();
        let sounds = Sounds::load(tmp.path(), &["xx"]).unwrap();
        let lang = sounds.language("xx").unwrap();
        assert_eq!(lang.path(Prompt::Digit(7)), dir.join("7.wav"));
        assert_eq!(lang.path(Prompt::YourCodeIs), dir.join("your_code_is.wav"));
        assert_eq!(lang.duration(Prompt::Digit(3)), Duration::from_millis(500));
        assert_eq!(lang.durations_ms(), [500; 11]);
    }

    #[test]
    fn missing_file_is_named() {
        let (tmp, dir) = valid_root();
        let path = dir.join("4.wav");
        std::fs::remove_file(&path).unwrap();
        let err = load_err(&tmp);
        assert!(
            matches!(&err, SoundsError::Missing { path: p } if *p == path),
            "{err:?}"
        );
        assert!(err.to_string().contains("4.wav"), "{err}");
    }

    #[test]
    fn missing_language_dir_is_named() {
        let (tmp, _) = valid_root();
        let err = Sounds::load(tmp.path(), &["xx", "yy"]).unwrap_err();
        assert!(
            matches!(&err, SoundsError::MissingDir { path } if *path == tmp.path().join("yy")),
            "{err:?}"
        );
    }

    #[test]
    fn stereo_is_rejected() {
        let (tmp, dir) = valid_root();
        let path = dir.join("2.wav");
        write_wav(&path, spec(2, 8000, 16), 4000);
        let err = load_err(&tmp);
        assert!(
            matches!(&err, SoundsError::Channels { path: p, found: 2 } if *p == path),
            "{err:?}"
        );
        assert!(err.to_string().contains("2.wav"), "{err}");
    }

    #[test]
    fn cd_rate_is_rejected() {
        let (tmp, dir) = valid_root();
        let path = dir.join("your_code_is.wav");
        write_wav(&path, spec(1, 44_100, 16), 44_100);
        let err = load_err(&tmp);
        assert!(
            matches!(&err, SoundsError::SampleRate { path: p, found: 44_100 } if *p == path),
            "{err:?}"
        );
        assert!(err.to_string().contains("your_code_is.wav"), "{err}");
    }

    #[test]
    fn eight_bit_is_rejected() {
        let (tmp, dir) = valid_root();
        let path = dir.join("0.wav");
        write_wav(&path, spec(1, 8000, 8), 4000);
        let err = load_err(&tmp);
        assert!(
            matches!(&err, SoundsError::BitsPerSample { path: p, found: 8 } if *p == path),
            "{err:?}"
        );
        assert!(err.to_string().contains("0.wav"), "{err}");
    }

    #[test]
    fn float_is_rejected() {
        let (tmp, dir) = valid_root();
        let path = dir.join("5.wav");
        let float = hound::WavSpec {
            sample_format: hound::SampleFormat::Float,
            ..spec(1, 8000, 32)
        };
        let mut w = hound::WavWriter::create(&path, float).unwrap();
        for _ in 0..4000 {
            w.write_sample(0.1f32).unwrap();
        }
        w.finalize().unwrap();
        let err = load_err(&tmp);
        assert!(
            matches!(&err, SoundsError::NotPcm { path: p, .. } if *p == path),
            "{err:?}"
        );
    }

    #[test]
    fn non_wav_is_rejected() {
        let (tmp, dir) = valid_root();
        let path = dir.join("9.wav");
        std::fs::write(
            &path,
            b"ID3\x03\x00\x00\x00 this is an mp3, honest, padded to be long enough",
        )
        .unwrap();
        let err = load_err(&tmp);
        assert!(
            matches!(&err, SoundsError::NotWav { path: p, .. } if *p == path),
            "{err:?}"
        );
        assert!(err.to_string().contains("9.wav"), "{err}");

        // Shorter than a RIFF header.
        std::fs::write(&path, b"RIFF").unwrap();
        let err = load_err(&tmp);
        assert!(
            matches!(&err, SoundsError::NotWav { path: p, .. } if *p == path),
            "{err:?}"
        );
    }

    #[test]
    fn zero_samples_is_rejected() {
        let (tmp, dir) = valid_root();
        let path = dir.join("1.wav");
        write_wav(&path, spec(1, 8000, 16), 0);
        let err = load_err(&tmp);
        assert!(
            matches!(&err, SoundsError::Empty { path: p } if *p == path),
            "{err:?}"
        );
        assert!(err.to_string().contains("1.wav"), "{err}");
    }

    #[test]
    fn too_long_is_rejected() {
        let (tmp, dir) = valid_root();
        let path = dir.join("8.wav");
        write_wav(&path, spec(1, 8000, 16), 5 * 8000 + 1);
        let err = load_err(&tmp);
        assert!(
            matches!(&err, SoundsError::TooLong { path: p, .. } if *p == path),
            "{err:?}"
        );

        // Exactly five seconds is allowed.
        write_wav(&path, spec(1, 8000, 16), 5 * 8000);
        let sounds = Sounds::load(tmp.path(), &["xx"]).unwrap();
        let lang = sounds.language("xx").unwrap();
        assert_eq!(lang.duration(Prompt::Digit(8)), Duration::from_secs(5));
        assert_eq!(lang.durations_ms()[8], 5000);
    }

    #[test]
    fn truncated_data_is_rejected() {
        let (tmp, dir) = valid_root();
        let path = dir.join("3.wav");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        let err = load_err(&tmp);
        assert!(
            matches!(&err, SoundsError::Truncated { path: p, expected: 8000, found: 7900 } if *p == path),
            "{err:?}"
        );
    }

    #[test]
    fn bad_language_names_are_rejected() {
        let (tmp, _) = valid_root();
        for bad in ["", ".", "..", "../xx", "a/b"] {
            let err = Sounds::load(tmp.path(), &[bad]).unwrap_err();
            assert!(
                matches!(err, SoundsError::InvalidLanguage { .. }),
                "{bad:?}: {err:?}"
            );
            assert!(err.path().is_none());
        }
        let err = Sounds::load(tmp.path(), &["xx", "xx"]).unwrap_err();
        assert!(
            matches!(err, SoundsError::DuplicateLanguage { .. }),
            "{err:?}"
        );
    }
}
