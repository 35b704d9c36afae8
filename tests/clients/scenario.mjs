// One official Node.js client's drop-in scenario, as a JSON transcript on stdout.
//
//   node tests/clients/scenario.mjs --client elasticsearch|opensearch --index NAME [--api-key KEY] URL [URL ...]
//
// The same steps as tests/clients/scenario.py, written the way an application writes them with
// @elastic/elasticsearch 8 or @opensearch-project/opensearch 3 (their API methods and helpers). Each
// step records the status, the response headers and the body the client decoded, error or not.
// tests/real/test_dropin_matrix.py runs it straight at a real cluster and through Sluicegate.

import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'

const DOCS = 10000
const GZIP_DOCS = 2000 // the gzip part's bulk, small: compression is about bytes on the wire, not volume
const MAPPINGS = { properties: { n: { type: 'integer' }, tag: { type: 'keyword' }, message: { type: 'text' }, ts: { type: 'date' } } }
const SETTINGS = { number_of_shards: 3, number_of_replicas: 0 }

function document (i) {
  return { n: i, tag: `t${i % 10}`, message: `document number ${i} of the drop-in matrix`, ts: `2025-01-${String(1 + i % 28).padStart(2, '0')}T00:00:00Z` }
}

function documents (count) {
  return Array.from({ length: count }, (_, i) => document(i))
}

const { values, positionals: urls } = parseArgs({
  options: { client: { type: 'string' }, index: { type: 'string' }, 'api-key': { type: 'string' } },
  allowPositionals: true
})
const index = values.index
const apiKey = values['api-key']
const steps = []

// The installed client's version (its package.json is not among its exports).
function versionOf (name) {
  return JSON.parse(readFileSync(new URL(`./node_modules/${name}/package.json`, import.meta.url))).version
}

function headersOf (headers) {
  const out = {}
  for (const [k, v] of Object.entries(headers || {})) out[k.toLowerCase()] = Array.isArray(v) ? v.join(', ') : v
  return out
}

// One client call: what came back, from the result or from the error the client threw.
async function call (name, fn) {
  let status, headers, body
  try {
    const r = await fn()
    status = r.statusCode; headers = r.headers; body = r.body
  } catch (e) {
    if (!e.meta || e.meta.statusCode == null) {
      steps.push({ step: name, status: null, headers: null, body: { client_error: `${e.name}: ${e.message}` } })
      return null
    }
    status = e.meta.statusCode; headers = e.meta.headers; body = e.meta.body
  }
  if (typeof body === 'boolean') body = null // HEAD: the status says it
  steps.push({ step: name, status, headers: headersOf(headers), body: body ?? null })
  return body
}

function note (name, value) {
  steps.push({ step: name, value })
}

// Counts the HTTP requests a helper made, by status, until the returned function is called.
function countRequests (emitter) {
  const statuses = {}
  let counting = true
  emitter.on('response', (err, result) => {
    if (!counting) return
    const status = String(result?.statusCode ?? (err ? 'error' : 'none'))
    statuses[status] = (statuses[status] || 0) + 1
  })
  return () => { counting = false; return statuses }
}

function bulkStats (stats) {
  // `time` is the client's own stopwatch; everything else is what the cluster answered
  const { total, failed, retry, successful, noop, aborted, bytes } = stats
  return { total, failed, retry, successful, noop, aborted, bytes }
}

async function runElasticsearch () {
  const { Client } = await import('@elastic/elasticsearch')
  const version = versionOf('@elastic/elasticsearch')
  const connect = (compression) => new Client({
    nodes: urls, requestTimeout: 60000, compression, ...(apiKey ? { auth: { apiKey } } : {})
  })
  const es = connect(false)
  const m = { meta: true }
  note('client', { name: '@elastic/elasticsearch', version, major: version.split('.')[0] })

  await call('info', () => es.info({}, m))
  await call('create index', () => es.indices.create({ index, settings: SETTINGS, mappings: MAPPINGS }, m))
  await call('HEAD index', () => es.indices.exists({ index }, m))
  await call('HEAD missing index', () => es.indices.exists({ index: index + '-absent' }, m))
  await call('index doc', () => es.index({ index, id: 'doc-1', document: document(1), refresh: true }, m))
  await call('get doc', () => es.get({ index, id: 'doc-1' }, m))
  await call('update doc', () => es.update({ index, id: 'doc-1', doc: { tag: 'updated' }, refresh: true }, m))
  await call('get updated doc', () => es.get({ index, id: 'doc-1' }, m))
  await call('delete doc', () => es.delete({ index, id: 'doc-1', refresh: true }, m))
  await call('get deleted doc', () => es.get({ index, id: 'doc-1' }, m))

  const stopCounting = countRequests(es.diagnostic)
  const stats = await es.helpers.bulk({
    datasource: documents(DOCS),
    onDocument: (doc) => ({ index: { _index: index, _id: String(doc.n) } })
  })
  note('bulk helper', { ...bulkStats(stats), requests: stopCounting() })
  await call('refresh', () => es.indices.refresh({ index }, m))

  await call('count', () => es.count({ index }, m))
  await call('count with query', () => es.count({ index, query: { term: { tag: 't3' } } }, m))
  await call('search', () => es.search({
    index,
    query: { bool: { filter: [{ range: { n: { lt: 20 } } }] } },
    sort: [{ n: 'asc' }],
    size: 5,
    aggs: { tags: { terms: { field: 'tag' } }, n: { stats: { field: 'n' } } }
  }, m))
  await call('search missing index', () => es.search({ index: index + '-absent', query: { match_all: {} } }, m))
  await call('mget', () => es.mget({ index, ids: ['2', '3', 'no-such-doc'] }, m))
  await call('msearch', () => es.msearch({
    searches: [
      { index }, { query: { term: { tag: 't1' } }, size: 2, sort: [{ n: 'asc' }] },
      { index }, { query: { range: { n: { gte: 9990 } } }, size: 0 },
      { index: index + '-absent' }, { query: { match_all: {} } }
    ]
  }, m))

  let page = await call('scroll: first page', () => es.search({ index, scroll: '1m', size: 1000, sort: ['n'] }, m))
  let pages = 0
  while (page?.hits?.hits?.length) {
    const scrollId = page._scroll_id
    pages += 1
    page = await call(`scroll: page ${pages}`, () => es.scroll({ scroll_id: scrollId, scroll: '1m' }, m))
  }
  if (page?._scroll_id) await call('clear scroll', () => es.clearScroll({ scroll_id: page._scroll_id }, m))
  let scanned = 0; let sum = 0
  for await (const doc of es.helpers.scrollDocuments({ index, query: { match_all: {} }, size: 1000 })) {
    scanned += 1; sum += doc.n
  }
  note('scan helper', { docs: scanned, sum })

  const pit = await call('open point in time', () => es.openPointInTime({ index, keep_alive: '1m' }, m))
  if (pit?.id) {
    let pitId = pit.id; let after = null; let n = 0
    for (;;) {
      const id = pitId; const searchAfter = after
      page = await call(`pit: page ${n}`, () => es.search({
        pit: { id, keep_alive: '1m' }, size: 2500, sort: [{ n: 'asc' }], ...(searchAfter ? { search_after: searchAfter } : {})
      }, m))
      const hits = page?.hits?.hits
      if (!hits?.length) break
      pitId = page.pit_id ?? pitId; after = hits[hits.length - 1].sort; n += 1
    }
    await call('close point in time', () => es.closePointInTime({ id: pitId }, m))
  }

  await call('async search', () => es.asyncSearch.submit({
    index, query: { range: { n: { lt: 100 } } }, size: 1, sort: [{ n: 'asc' }], wait_for_completion_timeout: '5s'
  }, m))
  await call('delete by query', () => es.deleteByQuery({ index, query: { range: { n: { gte: 9000 } } }, refresh: true }, m))
  await call('count after delete by query', () => es.count({ index }, m))

  const task = await call('force merge, as a task', () => es.indices.forcemerge({ index, wait_for_completion: false }, m))
  if (task?.task) await call('get task', () => es.tasks.get({ task_id: task.task, wait_for_completion: true }, m))
  await call('list tasks', () => es.tasks.list({ actions: '*byquery', detailed: true }, m))
  await call('cat indices json', () => es.cat.indices({ index, format: 'json' }, m))
  await call('cat indices text', () => es.cat.indices({ index, v: true, h: 'health,status,index,pri,rep,docs.count' }, m))
  await call('cluster health of the index', () => es.cluster.health({ index, wait_for_status: 'green' }, m))
  await call('cluster health', () => es.cluster.health({}, m))

  // The same client with compression on: gzip request bodies, gzip responses.
  const gz = connect(true)
  const gzIndex = index + '-gz'
  await call('gzip: create index', () => gz.indices.create({ index: gzIndex, settings: SETTINGS, mappings: MAPPINGS }, m))
  await call('gzip: index doc', () => gz.index({ index: gzIndex, id: 'doc-1', document: document(1), refresh: true }, m))
  await call('gzip: get doc', () => gz.get({ index: gzIndex, id: 'doc-1' }, m))
  const gzStats = await gz.helpers.bulk({
    datasource: documents(GZIP_DOCS), refreshOnCompletion: gzIndex,
    onDocument: (doc) => ({ index: { _index: gzIndex, _id: String(doc.n) } })
  })
  note('gzip: bulk helper', bulkStats(gzStats))
  await call('gzip: search, a large response', () => gz.search({ index: gzIndex, size: GZIP_DOCS, sort: [{ n: 'asc' }] }, m))
  await call('gzip: msearch', () => gz.msearch({ searches: [{ index: gzIndex }, { size: 1, sort: [{ n: 'desc' }] }] }, m))
  page = await call('gzip: scroll: first page', () => gz.search({ index: gzIndex, scroll: '1m', size: 500, sort: ['n'] }, m))
  if (page?._scroll_id) {
    const scrollId = page._scroll_id
    await call('gzip: scroll: next page', () => gz.scroll({ scroll_id: scrollId, scroll: '1m' }, m))
    await call('gzip: clear scroll', () => gz.clearScroll({ scroll_id: scrollId }, m))
  }
  await call('gzip: delete index', () => gz.indices.delete({ index: gzIndex }, m))

  await call('delete index', () => es.indices.delete({ index }, m))
  await Promise.all([es.close(), gz.close()])
}

async function runOpensearch () {
  const { Client } = await import('@opensearch-project/opensearch')
  const version = versionOf('@opensearch-project/opensearch')
  const connect = (compress) => new Client({
    nodes: urls,
    requestTimeout: 60000,
    ...(compress ? { compression: 'gzip', suggestCompression: true } : {}),
    ...(apiKey ? { headers: { authorization: `ApiKey ${apiKey}` } } : {})
  })
  const client = connect(false)
  note('client', { name: '@opensearch-project/opensearch', version, major: version.split('.')[0] })

  await call('info', () => client.info())
  await call('create index', () => client.indices.create({ index, body: { settings: SETTINGS, mappings: MAPPINGS } }))
  await call('HEAD index', () => client.indices.exists({ index }))
  await call('HEAD missing index', () => client.indices.exists({ index: index + '-absent' }))
  await call('index doc', () => client.index({ index, id: 'doc-1', body: document(1), refresh: true }))
  await call('get doc', () => client.get({ index, id: 'doc-1' }))
  await call('update doc', () => client.update({ index, id: 'doc-1', body: { doc: { tag: 'updated' } }, refresh: true }))
  await call('get updated doc', () => client.get({ index, id: 'doc-1' }))
  await call('delete doc', () => client.delete({ index, id: 'doc-1', refresh: true }))
  await call('get deleted doc', () => client.get({ index, id: 'doc-1' }))

  const stopCounting = countRequests(client)
  const stats = await client.helpers.bulk({
    datasource: documents(DOCS),
    onDocument: (doc) => ({ index: { _index: index, _id: String(doc.n) } })
  })
  note('bulk helper', { ...bulkStats(stats), requests: stopCounting() })
  await call('refresh', () => client.indices.refresh({ index }))

  await call('count', () => client.count({ index }))
  await call('count with query', () => client.count({ index, body: { query: { term: { tag: 't3' } } } }))
  await call('search', () => client.search({
    index,
    body: {
      query: { bool: { filter: [{ range: { n: { lt: 20 } } }] } },
      sort: [{ n: 'asc' }],
      size: 5,
      aggs: { tags: { terms: { field: 'tag' } }, n: { stats: { field: 'n' } } }
    }
  }))
  await call('search missing index', () => client.search({ index: index + '-absent', body: { query: { match_all: {} } } }))
  await call('mget', () => client.mget({ index, body: { ids: ['2', '3', 'no-such-doc'] } }))
  await call('msearch', () => client.msearch({
    body: [
      { index }, { query: { term: { tag: 't1' } }, size: 2, sort: [{ n: 'asc' }] },
      { index }, { query: { range: { n: { gte: 9990 } } }, size: 0 },
      { index: index + '-absent' }, { query: { match_all: {} } }
    ]
  }))

  let page = await call('scroll: first page', () => client.search({ index, scroll: '1m', size: 1000, body: { sort: ['n'] } }))
  let pages = 0
  while (page?.hits?.hits?.length) {
    const scrollId = page._scroll_id
    pages += 1
    page = await call(`scroll: page ${pages}`, () => client.scroll({ body: { scroll_id: scrollId, scroll: '1m' } }))
  }
  if (page?._scroll_id) await call('clear scroll', () => client.clearScroll({ body: { scroll_id: page._scroll_id } }))
  let scanned = 0; let sum = 0
  for await (const doc of client.helpers.scrollDocuments({ index, body: { query: { match_all: {} } }, size: 1000 })) {
    scanned += 1; sum += doc.n
  }
  note('scan helper', { docs: scanned, sum })

  const pit = await call('open point in time', () => client.createPit({ index, keep_alive: '1m' }))
  if (pit?.pit_id) {
    let pitId = pit.pit_id; let after = null; let n = 0
    for (;;) {
      const body = { pit: { id: pitId, keep_alive: '1m' }, size: 2500, sort: [{ n: 'asc' }] }
      if (after) body.search_after = after
      page = await call(`pit: page ${n}`, () => client.search({ body }))
      const hits = page?.hits?.hits
      if (!hits?.length) break
      pitId = page.pit_id ?? pitId; after = hits[hits.length - 1].sort; n += 1
    }
    await call('close point in time', () => client.deletePit({ body: { pit_id: [pitId] } }))
  }

  await call('delete by query', () => client.deleteByQuery({ index, body: { query: { range: { n: { gte: 9000 } } } }, refresh: true }))
  await call('count after delete by query', () => client.count({ index }))

  const task = await call('force merge, as a task', () => client.indices.forcemerge({ index, wait_for_completion: false }))
  if (task?.task) await call('get task', () => client.tasks.get({ task_id: task.task, wait_for_completion: true }))
  await call('list tasks', () => client.tasks.list({ actions: '*byquery', detailed: true }))
  await call('cat indices json', () => client.cat.indices({ index, format: 'json' }))
  await call('cat indices text', () => client.cat.indices({ index, v: true, h: 'health,status,index,pri,rep,docs.count' }))
  await call('cluster health of the index', () => client.cluster.health({ index, wait_for_status: 'green' }))
  await call('cluster health', () => client.cluster.health())

  const gz = connect(true)
  const gzIndex = index + '-gz'
  await call('gzip: create index', () => gz.indices.create({ index: gzIndex, body: { settings: SETTINGS, mappings: MAPPINGS } }))
  await call('gzip: index doc', () => gz.index({ index: gzIndex, id: 'doc-1', body: document(1), refresh: true }))
  await call('gzip: get doc', () => gz.get({ index: gzIndex, id: 'doc-1' }))
  const gzStats = await gz.helpers.bulk({
    datasource: documents(GZIP_DOCS), refreshOnCompletion: gzIndex,
    onDocument: (doc) => ({ index: { _index: gzIndex, _id: String(doc.n) } })
  })
  note('gzip: bulk helper', bulkStats(gzStats))
  await call('gzip: search, a large response', () => gz.search({ index: gzIndex, body: { size: GZIP_DOCS, sort: [{ n: 'asc' }] } }))
  await call('gzip: msearch', () => gz.msearch({ body: [{ index: gzIndex }, { size: 1, sort: [{ n: 'desc' }] }] }))
  page = await call('gzip: scroll: first page', () => gz.search({ index: gzIndex, scroll: '1m', size: 500, body: { sort: ['n'] } }))
  if (page?._scroll_id) {
    const scrollId = page._scroll_id
    await call('gzip: scroll: next page', () => gz.scroll({ scroll_id: scrollId, scroll: '1m' }))
    await call('gzip: clear scroll', () => gz.clearScroll({ body: { scroll_id: scrollId } }))
  }
  await call('gzip: delete index', () => gz.indices.delete({ index: gzIndex }))

  await call('delete index', () => client.indices.delete({ index }))
  await Promise.all([client.close(), gz.close()])
}

if (values.client === 'elasticsearch') await runElasticsearch()
else if (values.client === 'opensearch') await runOpensearch()
else throw new Error('--client elasticsearch|opensearch')
process.stdout.write(JSON.stringify(steps) + '\n')
