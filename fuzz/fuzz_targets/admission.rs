//! Fuzzes the webhook's request path: body parsing and mutation. Beyond "never panics", every
//! patch it answers must apply strictly to the pod it was made for, and the patched pod must get
//! no second patch.

#![no_main]

use libfuzzer_sys::fuzz_target;
use s3mount_webhook::inject::{InjectConfig, Lifecycle};
use s3mount_webhook::review::{self, Context, NamespaceView, Outcome};

fn context(lifecycle: Lifecycle) -> Context {
    Context {
        inject: InjectConfig {
            sidecar_image: "s3mount-sidecar:fuzz".into(),
            lifecycle,
            image_pull_policy: None,
        },
        opt_in_label: ("s3.mount/inject".into(), "enabled".into()),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(body) = review::parse_body(data) else {
        return;
    };
    for lifecycle in [Lifecycle::Native, Lifecycle::Legacy] {
        let ctx = context(lifecycle);
        let Ok(answer) = review::mutate(&body, &ctx, NamespaceView::Unknown) else {
            continue;
        };
        let _ = answer.to_json();
        if answer.outcome != Outcome::Patched {
            continue;
        }
        let patch = answer.patch().expect("a patched answer carries a patch");
        let mut pod = body["request"]["object"].clone();
        json_patch::patch(&mut pod, &patch).expect("the patch applies to the pod it was made for");
        let mut again = body.clone();
        again["request"]["object"] = pod;
        let second = review::mutate(&again, &ctx, NamespaceView::Unknown).expect("patched pod is answerable");
        assert_eq!(second.outcome, Outcome::Skipped, "second pass must not patch");
    }
});
