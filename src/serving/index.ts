/**
 * Serving a trained model over HTTP (`torchlearn/serving`): a fastify plugin for your own app, a server of
 * its own, and what `torchlearn serve` runs.
 *
 * @module torchlearn/serving
 */
export { torchlearnServe, createServer, serve } from './server.js';
export type { ServeOptions, ServeCommandOptions, PredictResponse, RunningServer } from './server.js';
