//! What the servers in this test process log, kept in memory so a test can check the spans and
//! events an operator would see. [`capture`] installs the collector as the process's tracing
//! subscriber on first use; Mintgate's own crates are captured at INFO and above.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;

/// One logged event and the spans it happened in, outermost first.
#[derive(Debug, Clone)]
pub struct Logged {
    pub fields: BTreeMap<String, String>,
    /// (span name, its fields as recorded by the time of the event)
    pub spans: Vec<(String, BTreeMap<String, String>)>,
}

impl Logged {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    /// The fields of the innermost enclosing span called `name`.
    pub fn span(&self, name: &str) -> Option<&BTreeMap<String, String>> {
        self.spans
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, f)| f)
    }
}

/// The events captured so far (from every test in this process).
pub struct Captured(Mutex<Vec<Logged>>);

impl Captured {
    pub fn events(&self) -> Vec<Logged> {
        self.0.lock().unwrap().clone()
    }
}

/// Starts capturing (once per process) and returns the capture.
pub fn capture() -> &'static Captured {
    static CAPTURED: OnceLock<&'static Captured> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured: &'static Captured = Box::leak(Box::new(Captured(Mutex::new(Vec::new()))));
        let targets = ["mintgate_api", "mintgate_store", "mintgate_server"]
            .into_iter()
            .fold(Targets::new(), |t, target| {
                t.with_target(target, Level::INFO)
            });
        let subscriber =
            tracing_subscriber::registry().with(Collector(captured).with_filter(targets));
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other test installs a tracing subscriber");
        captured
    })
}

struct Collector(&'static Captured);

/// A span's fields, kept in its extensions.
struct Fields(BTreeMap<String, String>);

struct Visitor<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Collector {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Visitor(&mut fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Fields(fields));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
        {
            values.record(&mut Visitor(&mut fields.0));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Visitor(&mut fields));
        let spans = ctx
            .event_scope(event)
            .into_iter()
            .flat_map(|scope| scope.from_root())
            .map(|span| {
                let fields = span
                    .extensions()
                    .get::<Fields>()
                    .map(|f| f.0.clone())
                    .unwrap_or_default();
                (span.name().to_owned(), fields)
            })
            .collect();
        self.0.0.lock().unwrap().push(Logged { fields, spans });
    }
}
