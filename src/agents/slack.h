/*
 * slack.h - the Slack agent's message formatting. The agent itself is made
 * by agent_slack_def() (agents.h); these pure functions are public so that
 * the unit tests can check the text and the payload byte for byte.
 */
#ifndef HERALD_SLACK_H
#define HERALD_SLACK_H

/*
 * Escape text for Slack's message formatting: '&', '<' and '>' become
 * "&amp;", "&lt;" and "&gt;"; every other byte (quotes, UTF-8, control
 * characters) is kept as it is. Returns a new string the caller frees.
 */
char *slack_escape(const char *text);

/*
 * The message for a task event, before escaping:
 *   task.created   -> ":new: Task created: <title>"
 *   task.completed -> ":white_check_mark: Task completed: <title>"
 * Returns a new string the caller frees, or NULL for any other type.
 */
char *slack_text(const char *event_type, const char *title);

/*
 * The webhook's JSON body, compact, UTF-8 (no \u escapes beyond those JSON
 * requires): {"channel": <channel>, "text": <slack_escape(text)>}.
 * Returns a new string the caller frees.
 */
char *slack_payload(const char *channel, const char *text);

#endif
