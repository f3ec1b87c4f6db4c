/**
 * The covid-chestxray collection's helpers (`torchlearn/datasets/covid`): its metadata.csv read across the
 * schemas it has had, and its images laid out as one folder per class. The bundled example uses them.
 *
 * @module torchlearn/datasets/covid
 */
export { readCovidMetadata, isCovidFinding, findingLabels, POSITIVE, NEGATIVE } from '../data/metadata.js';
export type { CovidItem, MetadataFilters, MetadataResult } from '../data/metadata.js';
export { segregateByLabel } from '../data/segregate.js';
export type { SegregateOptions, SegregateResult } from '../data/segregate.js';
