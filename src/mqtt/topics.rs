//! Topic names: the agent's own (`{topic_prefix}/{device_id}/agent/...`) and the rule for
//! what local apps may publish to.

/// The longest topic accepted from a local app. MQTT allows 65535 bytes; brokers commonly
/// cap far lower, and nothing legitimate needs more.
pub const MAX_TOPIC_LEN: usize = 1024;

/// The agent's topics for one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Retained `online`/`offline`; the Last Will publishes `offline` here.
    pub status: String,
    /// Periodic JSON: agent state and token expiry.
    pub heartbeat: String,
    /// Commands to the agent (subscribed, QoS 1).
    pub cmd: String,
    /// Answers to commands.
    pub response: String,
    /// `{topic_prefix}/{device_id}/agent/`: reserved for the agent itself.
    agent_tree: String,
    /// Local apps publish only below this.
    publish_prefix: String,
}

/// Why a local app may not publish to a topic. The text is safe to return to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("the topic is empty")]
    Empty,
    #[error("the topic is longer than {MAX_TOPIC_LEN} bytes")]
    TooLong,
    #[error("the topic must not contain '+', '#' or NUL (wildcards are for subscribing)")]
    Wildcard,
    #[error("the topic must start with {prefix:?}")]
    OutsidePrefix { prefix: String },
    #[error("topics under {tree:?} belong to the agent itself")]
    AgentTopic { tree: String },
}

// === impl Topics ===

impl Topics {
    /// The topics for `device_id` under `topic_prefix` (both validated by the config).
    pub fn new(topic_prefix: &str, device_id: &str, publish_prefix: &str) -> Self {
        let agent_tree = format!("{topic_prefix}/{device_id}/agent/");
        Self {
            status: format!("{agent_tree}status"),
            heartbeat: format!("{agent_tree}heartbeat"),
            cmd: format!("{agent_tree}cmd"),
            response: format!("{agent_tree}response"),
            agent_tree,
            publish_prefix: publish_prefix.to_owned(),
        }
    }

    pub fn publish_prefix(&self) -> &str {
        &self.publish_prefix
    }

    /// Whether `topic` is one of the agent's own (status, heartbeat, commands, answers).
    pub fn is_agent_topic(&self, topic: &str) -> bool {
        topic.starts_with(&self.agent_tree)
    }

    /// Checks a topic a local app wants to publish to: a concrete topic name under the
    /// publish prefix, and not one of the agent's own, so an app cannot fake the device's
    /// presence or answer commands in the agent's name.
    ///
    /// # Errors
    /// The rule broken.
    pub fn check_local(&self, topic: &str) -> Result<(), TopicError> {
        if topic.is_empty() {
            return Err(TopicError::Empty);
        }
        if topic.len() > MAX_TOPIC_LEN {
            return Err(TopicError::TooLong);
        }
        if topic.contains(['+', '#', '\0']) {
            return Err(TopicError::Wildcard);
        }
        if !topic.starts_with(&self.publish_prefix) {
            return Err(TopicError::OutsidePrefix {
                prefix: self.publish_prefix.clone(),
            });
        }
        if self.is_agent_topic(topic) || format!("{topic}/") == self.agent_tree {
            return Err(TopicError::AgentTopic {
                tree: self.agent_tree.clone(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_topics() {
        let t = Topics::new("devices", "pump-7", "devices/pump-7/");
        assert_eq!(t.status, "devices/pump-7/agent/status");
        assert_eq!(t.heartbeat, "devices/pump-7/agent/heartbeat");
        assert_eq!(t.cmd, "devices/pump-7/agent/cmd");
        assert_eq!(t.response, "devices/pump-7/agent/response");
        assert!(t.is_agent_topic(&t.status));
        assert!(!t.is_agent_topic("devices/pump-7/telemetry"));
    }

    #[test]
    fn local_topics() {
        let t = Topics::new("devices", "pump-7", "devices/pump-7/");
        assert_eq!(t.check_local("devices/pump-7/telemetry"), Ok(()));
        assert_eq!(t.check_local("devices/pump-7/a/b/c"), Ok(()));
        let long = format!("devices/pump-7/{}", "x".repeat(MAX_TOPIC_LEN));
        let rows = [
            ("", TopicError::Empty),
            (long.as_str(), TopicError::TooLong),
            ("devices/pump-7/+", TopicError::Wildcard),
            ("devices/pump-7/#", TopicError::Wildcard),
            ("devices/pump-7/a\0", TopicError::Wildcard),
            (
                "devices/pump-8/telemetry",
                TopicError::OutsidePrefix {
                    prefix: "devices/pump-7/".into(),
                },
            ),
            (
                "devices/pump-7/agent/status",
                TopicError::AgentTopic {
                    tree: "devices/pump-7/agent/".into(),
                },
            ),
            (
                "devices/pump-7/agent",
                TopicError::AgentTopic {
                    tree: "devices/pump-7/agent/".into(),
                },
            ),
        ];
        for (topic, want) in rows {
            assert_eq!(t.check_local(topic), Err(want), "{topic}");
        }
    }
}
