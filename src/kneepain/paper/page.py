"""The document's page: a Jinja template kept in a module, so it ships without package data."""

TEMPLATE = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>kneepain paper: the results section, reproduced</title>
<style>
  * { box-sizing: border-box; }
  body { font-family: Georgia, "Times New Roman", serif; margin: 0 auto; max-width: 1100px;
         padding: 1rem 2rem 3rem; color: #1b1b1b; line-height: 1.5; overflow-wrap: break-word; }
  h1 { font-size: 1.7rem; margin-bottom: 0.2rem; }
  h2 { font-size: 1.25rem; margin: 0.6rem 0 0.4rem; }
  .where { color: #555; font-size: 0.85rem; margin-top: 0; overflow-wrap: anywhere;
           font-family: system-ui, sans-serif; }
  .synthetic { background: #b00020; color: #fff; padding: 0.8rem 1.1rem; border-radius: 6px;
               font-family: system-ui, sans-serif; }
  .synthetic ul { font-size: 0.85rem; margin: 0.4rem 0 0; overflow-wrap: anywhere; }
  .real { background: #eef3f8; padding: 0.6rem 1rem; border-radius: 6px; }
  .legend { font-family: system-ui, sans-serif; font-size: 0.9rem; }
  .legend span { display: inline-block; padding: 0.05rem 0.5rem; border-radius: 3px; margin-right: 0.4rem; }
  .pub { background: #e8e8e8; }
  .ours { background: #dff0e3; }
  nav { display: flex; flex-wrap: wrap; gap: 0.2rem 0.9rem; margin-top: 0.8rem; font-size: 0.9rem;
        font-family: system-ui, sans-serif; }
  section { border-top: 1px solid #ddd; margin-top: 1.4rem; }
  .missing { color: #6b5400; background: #fff8e1; padding: 0.5rem 0.8rem; border-radius: 4px;
             font-family: system-ui, sans-serif; font-size: 0.9rem; }
  .verdict { background: #fdecea; border-left: 4px solid #b00020; padding: 0.5rem 0.8rem; }
  p.methods { margin: 0.35rem 0; font-size: 0.95rem; }
  .table-wrap { max-width: 100%; overflow-x: auto; margin: 0.5rem 0 0.2rem; }
  .table-caption { font-weight: 600; margin: 0.9rem 0 0; font-size: 0.95rem; }
  table.table { border-collapse: collapse; font-size: 0.86rem; font-family: system-ui, sans-serif; }
  table.table th, table.table td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left;
                                   vertical-align: top; }
  table.table th { background: #f3f3f3; font-weight: 600; }
  table.table th.pub { background: #e4e4e4; }
  table.table th.ours { background: #d6ecdb; }
  table.table th[colspan] { text-align: center; }
  .note { font-size: 0.82rem; color: #444; margin: 0.2rem 0 0.8rem; max-width: 80ch;
          font-family: system-ui, sans-serif; }
  .figures { display: flex; flex-wrap: wrap; gap: 1rem; }
  figure { margin: 0.6rem 0; flex: 1 1 420px; max-width: 540px; }
  figure img { display: block; width: 100%; height: auto; border: 1px solid #eee; }
  figcaption { font-size: 0.85rem; color: #333; margin-top: 0.3rem; font-family: system-ui, sans-serif; }
  @media (max-width: 600px) {
    body { padding: 0.6rem 0.8rem 2rem; }
    table.table { font-size: 0.78rem; }
    table.table th, table.table td { padding: 0.2rem 0.3rem; }
  }
</style>
</head>
<body>
<h1>Results, reproduced: published on the OAI beside ours</h1>
<p class="where">{{ source }} · work folder {{ work }}</p>
{% if synthetic %}
<div class="synthetic" id="synthetic-notice" role="alert">
  <strong>SYNTHETIC DATA.</strong> Our numbers were computed on a synthetic cohort made by the
  generator. They describe the generator and the software, not any patient population: they are
  not clinical results and are not expected to equal the published ones.
  <ul>{% for reason in evidence %}<li>{{ reason }}</li>{% endfor %}</ul>
</div>
{% else %}
<p class="real" id="data-notice">No synthetic-data marker was found (no <code>synthetic: true</code>,
no generator <code>truth/</code> folder beside the images).</p>
{% endif %}
<p class="legend">Columns: <span class="pub">{{ published }}</span> the value printed in the paper;
<span class="ours">{{ ours }}</span> computed here by the kneepain stages from this work folder's run
folders.</p>
<nav>{% for s in sections %}<a href="#{{ s.key }}">{{ s.title }}</a>{% endfor %}</nav>
{% for s in sections %}
<section id="{{ s.key }}">
  <h2>{{ s.title }}</h2>
  {% if s.missing %}<p class="missing">{{ s.missing }}</p>{% endif %}
  {% for b in s.blocks %}
    {% if b.kind == "table" %}
      {% if b.caption %}<p class="table-caption">{{ b.caption }}</p>{% endif %}
      <div class="table-wrap">{{ b.html | safe }}</div>
      {% if b.note %}<p class="note">{{ b.note }}</p>{% endif %}
    {% elif b.kind == "figures" %}
      <div class="figures">
      {% for image in b.figures %}
        <figure><img id="{{ image.id }}" src="{{ image.src }}" alt="{{ image.alt }}"
          {% if image.plot_fraction %}data-plot-width-fraction="{{ image.plot_fraction }}"
          data-width-px="{{ image.width_px }}"{% endif %}>
          {% if image.caption %}<figcaption>{{ image.caption }}</figcaption>{% endif %}</figure>
      {% endfor %}
      </div>
    {% else %}
      <p class="{{ b.kind }}">{{ b.text }}</p>
    {% endif %}
  {% endfor %}
</section>
{% endfor %}
</body>
</html>
"""
