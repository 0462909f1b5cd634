/**
 * Loaded by the SDK through `DataConverter.failureConverterPath`: failure messages and
 * stack traces travel inside an encoded (so encrypted) payload, as the Python side's
 * DefaultFailureConverterWithEncodedAttributes does.
 */
import { DefaultFailureConverter } from '@temporalio/common';

export const failureConverter = new DefaultFailureConverter({ encodeCommonAttributes: true });
