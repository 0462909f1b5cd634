/**
 * Follow a running workflow as `starter.py start --wait` does: each activity as it starts
 * and ends, with how long it took, and, during the long waits, what it waits for.
 *
 * Steps and durations come from the run's history, long-polled (`waitNewEvent`): unlike a
 * `status` query a second, that costs no billable action on Temporal Cloud and needs no live
 * worker. A duration is scheduled to ended, retries included, from the server's event times.
 * What a running activity waits for comes from a describe every `reportEveryMs` (no billable
 * action either): its last heartbeat details (boot, cloud-init, image pulls), its attempt
 * and, on a retry, the last attempt's failure, reported when it changes.
 */
import { Client } from '@temporalio/client';
import {
  decodeArrayFromPayloads,
  decodeOptionalFailureToOptionalError,
} from '@temporalio/common/lib/internal-non-workflow';
import { tsToMs } from '@temporalio/common/lib/time';
import { temporal } from '@temporalio/proto';

const EventType = temporal.api.enums.v1.EventType;

/** Describe interval of `starter.py start --wait` (WAIT_REPORT_SECONDS). */
export const DEFAULT_REPORT_EVERY_MS = 10_000;

export type ProgressEvent =
  | {
      kind: 'step';
      /** The activity type, e.g. `bring_up_server`. */
      activity: string;
      state: 'running' | 'done' | 'failed' | 'cancelled';
      /** Scheduled to ended (retries included), on the server's clock; for an ended step only. */
      seconds?: number;
    }
  | {
      kind: 'waiting';
      activity: string;
      /** The activity's last heartbeat details, decoded with the project's codec. */
      details: unknown[];
      attempt: number;
      /** The last attempt's failure message, on a retry. */
      lastFailure?: string;
    };

const OUTCOMES = new Map<number, 'done' | 'failed' | 'cancelled'>([
  [EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED, 'done'],
  [EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED, 'failed'],
  [EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT, 'failed'],
  [EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED, 'cancelled'],
]);

type HistoryEvent = temporal.api.history.v1.IHistoryEvent;

function scheduledIdOf(event: HistoryEvent): string | undefined {
  const attributes =
    event.activityTaskCompletedEventAttributes ??
    event.activityTaskFailedEventAttributes ??
    event.activityTaskTimedOutEventAttributes ??
    event.activityTaskCanceledEventAttributes;
  return attributes?.scheduledEventId?.toString();
}

/** Calls `onEvent` for every step start and end of the run until it closes. */
export async function watchProgress(
  client: Client,
  workflowId: string,
  onEvent: (event: ProgressEvent) => void,
  reportEveryMs: number = DEFAULT_REPORT_EVERY_MS,
): Promise<void> {
  let closed = false;
  const reporter = reportWaits(client, workflowId, onEvent, reportEveryMs, () => closed);
  try {
    const scheduled = new Map<string, { activity: string; at: number }>();
    let nextPageToken: Uint8Array | undefined;
    do {
      const page = await client.workflowService.getWorkflowExecutionHistory({
        namespace: client.options.namespace,
        execution: { workflowId },
        nextPageToken,
        waitNewEvent: true,
      });
      for (const event of page.history?.events ?? []) {
        if (event.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED) {
          const activity = event.activityTaskScheduledEventAttributes?.activityType?.name ?? '?';
          scheduled.set(String(event.eventId), { activity, at: tsToMs(event.eventTime) });
          onEvent({ kind: 'step', activity, state: 'running' });
          continue;
        }
        const outcome = OUTCOMES.get(event.eventType ?? 0);
        const start = outcome && scheduled.get(scheduledIdOf(event) ?? '');
        if (outcome && start) {
          const seconds = (tsToMs(event.eventTime) - start.at) / 1000;
          onEvent({ kind: 'step', activity: start.activity, state: outcome, seconds });
        }
      }
      // With waitNewEvent the server answers an empty token once the run has closed.
      nextPageToken = page.nextPageToken?.length ? page.nextPageToken : undefined;
    } while (nextPageToken);
  } finally {
    closed = true;
    await reporter;
  }
}

async function reportWaits(
  client: Client,
  workflowId: string,
  onEvent: (event: ProgressEvent) => void,
  everyMs: number,
  done: () => boolean,
): Promise<void> {
  const converter = client.options.loadedDataConverter;
  const last = new Map<string, string>();
  while (!done()) {
    await sleepUnless(everyMs, done);
    if (done()) return;
    let pending: temporal.api.workflow.v1.IPendingActivityInfo[];
    try {
      pending = (await client.workflow.getHandle(workflowId).describe()).raw.pendingActivities ?? [];
    } catch {
      continue; // the server is briefly unreachable: the history poll reports that
    }
    for (const info of pending) {
      const activity = info.activityType?.name ?? '?';
      const attempt = info.attempt ?? 1;
      let details: unknown[];
      try {
        details = await decodeArrayFromPayloads(converter, info.heartbeatDetails?.payloads);
      } catch (err) {
        // An undecodable detail must not stop the progress.
        details = [`(details unreadable: ${(err as Error).name})`];
      }
      let lastFailure: string | undefined;
      if (attempt > 1 && info.lastFailure) {
        const failure = await decodeOptionalFailureToOptionalError(converter, info.lastFailure);
        lastFailure = failure?.message.slice(0, 200);
      }
      if (details.length === 0 && attempt <= 1) continue; // nothing to say yet
      const event: ProgressEvent = { kind: 'waiting', activity, details, attempt, lastFailure };
      const key = JSON.stringify(event);
      if (last.get(info.activityId ?? activity) !== key) {
        last.set(info.activityId ?? activity, key);
        onEvent(event);
      }
    }
  }
}

/** Sleeps `ms`, waking early (checked every 200 ms) once `done()` holds. */
async function sleepUnless(ms: number, done: () => boolean): Promise<void> {
  const until = Date.now() + ms;
  while (!done() && Date.now() < until) {
    await new Promise((resolve) => setTimeout(resolve, Math.min(200, until - Date.now())));
  }
}

/** One human line, in the shape `starter.py start --wait` prints. */
export function progressLine(event: ProgressEvent): string {
  if (event.kind === 'step') {
    const took = event.seconds === undefined ? '' : ` (${formatDuration(event.seconds)})`;
    return `  ${event.activity.padEnd(26)} ${event.state}${took}`;
  }
  const parts: string[] = [];
  if (event.details.length > 0) {
    const text = event.details.map((d) => (typeof d === 'string' ? d : JSON.stringify(d)));
    parts.push(`waiting: ${text.join('; ').slice(0, 200)}`);
  }
  if (event.attempt > 1) {
    parts.push(`attempt ${event.attempt}` + (event.lastFailure ? `, last: ${event.lastFailure}` : ''));
  }
  return `  ${event.activity.padEnd(26)} ${parts.join('; ')}`;
}

/** `12.3 s` under a minute, else `4 min 05 s` (starter.py's _duration). */
export function formatDuration(seconds: number): string {
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const whole = Math.floor(seconds);
  return `${Math.floor(whole / 60)} min ${String(whole % 60).padStart(2, '0')} s`;
}
