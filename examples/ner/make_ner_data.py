"""Generate llmkit's small hand-written NER dataset (CoNLL format, BIO/IOB2 tags).

Every sentence below was written by hand for llmkit's token-classification
quickstart; none is copied from CoNLL-2003 or any other corpus. Notation:
tokens are separated by spaces, and an entity is written as ``[TYPE words]``
with TYPE one of PER, LOC, ORG, MISC. Running this script (standard library
only) rewrites train.conll, dev.conll and test.conll next to it, byte for byte.

    python examples/ner/make_ner_data.py
"""
import os
import re

TRAIN = """
[PER Ada Lovelace] wrote notes on the [MISC Analytical Engine] in [LOC London] .
The mayor of [LOC Lyon] opened a new tram line on Monday .
[ORG Nordvik Motors] reported higher profits for the third quarter .
[PER Maria Okafor] scored twice as [ORG Riverside FC] beat [ORG Harbour Town] 3-1 .
Heavy rain closed several roads near the [LOC Danube] last night .
The [MISC Winter Olympics] will return to [LOC Norway] in a few years .
[PER Tomasz Wilk] joined [ORG Helix Labs] as chief engineer .
Researchers at [ORG Stanford University] published a study on sleep and memory .
We took the night train from [LOC Vienna] to [LOC Venice] .
The committee will meet again next week .
[PER Chen Yu] speaks [MISC Mandarin] , [MISC French] and [MISC Swahili] .
[ORG Bluewater Airlines] cancelled forty flights because of the storm .
The [MISC Tour de France] finished in [LOC Paris] on Sunday afternoon .
[PER Isabel Duarte] was elected president of the [ORG Lisbon Chess Club] .
Prices of coffee rose sharply after a dry season in [LOC Brazil] .
[PER Rahul Mehta] , a chemist from [LOC Pune] , won the award for his work on batteries .
The new [MISC Falcon X2] phone goes on sale in [LOC Japan] next month .
Engineers repaired the bridge over the [LOC Rhine] in under a week .
[ORG Kestrel Bank] agreed to buy a smaller rival for two billion dollars .
[PER Olga Petrova] finished fourth in the women 's marathon .
Thousands of visitors came to see the lanterns at the [MISC Harvest Festival] .
The museum in [LOC Cairo] displayed a newly restored statue .
[PER James O'Neill] coaches the under-18 team at [ORG Cork City] .
The [MISC German] delegation arrived late because of fog in [LOC Frankfurt] .
Scientists at [ORG CERN] measured the particle with greater precision .
Nobody expected the vote to be so close .
[PER Aiko Tanaka] climbed [LOC Mount Fuji] with her grandfather in August .
[ORG Greenleaf Foods] will close its factory in [LOC Leeds] .
The [LOC Amazon] river carries more water than any other river on Earth .
[PER Pablo Reyes] signed a two-year contract with [ORG Atletico Sur] .
A small earthquake shook [LOC Santiago] early on Tuesday .
[ORG Orbital Dynamics] launched its second weather satellite from [LOC French Guiana] .
The [MISC Canadian] team won gold in the relay .
[PER Fatima Zahra] teaches history at the [ORG University of Rabat] .
[PER Lars Eriksen] sold his shares in [ORG Fjord Shipping] last spring .
Tickets for the [MISC World Cup] final sold out within an hour .
The road from [LOC Kathmandu] to [LOC Pokhara] was reopened after the landslide .
[ORG Meridian Health] hired three hundred nurses this year .
She learned to code in [MISC Python] before moving to [MISC Rust] .
[PER Nikolai Orlov] conducted the orchestra in [LOC St Petersburg] .
The old harbour of [LOC Valletta] is full of yachts in summer .
The new policy takes effect on the first of January .
[ORG Sunpeak Solar] installed panels on every school in [LOC Nairobi] .
[PER Grace Mwangi] broke the national record in the 800 metres .
Historians believe [PER Julius Caesar] crossed the [LOC Rubicon] in 49 BC .
[ORG Ironwood University] opened a new campus in [LOC Perth] .
A [MISC Dutch] cyclist won the mountain stage in the [LOC Alps] .
[PER Samuel Adeyemi] founded [ORG Lagos Robotics] in his garage .
The ferry to [LOC Gotland] leaves twice a day in winter .
[ORG Tidewater Insurance] paid out record claims after the floods .
Fans of [ORG Celtic Rovers] sang for the whole second half .
[PER Elena Rossi] won the [MISC Strega Prize] for her first novel .
The ship sank off the coast of [LOC Newfoundland] in 1912 .
[PER Hugo Laurent] is the new chief executive of [ORG Laurent & Fils] .
Farmers in [LOC Punjab] expect a good wheat harvest .
The [MISC Berlin Marathon] attracted more than forty thousand runners .
Our flight was delayed for three hours .
[ORG Quantix] released version 4 of its database software .
[PER Marta Kowalczyk] studied physics at [ORG Jagiellonian University] in [LOC Krakow] .
The [LOC Sahara] is expanding southwards by several kilometres a year .
[PER Diego Fernandez] and [PER Lucia Morales] opened a bakery in [LOC Seville] .
[ORG Polar Freight] bought six new icebreakers .
The [MISC Japanese] prime minister visited [LOC Canberra] on Friday .
[PER Kwame Asante] was named player of the month by [ORG Accra Hearts] .
A rare bird was spotted near [LOC Lake Geneva] this week .
[ORG Copperline Telecom] lost the contract to a cheaper bidder .
[PER Ingrid Berg] translated the novel from [MISC Norwegian] into [MISC English] .
The [MISC Renaissance] began in [LOC Florence] in the fourteenth century .
[ORG Oxford University] announced a new scholarship for refugees .
Tourists crowded the beaches of [LOC Phuket] over the holiday .
[PER Victor Hale] resigned after the scandal at [ORG Hale Construction] .
The price of the [MISC Model S] fell for the second time this year .
Rescue teams searched the hills above [LOC Innsbruck] for two missing hikers .
[PER Amina Yusuf] chairs the board of [ORG Sahel Water Trust] .
The final whistle blew and the crowd rushed onto the pitch .
[ORG Redfern Rugby Club] celebrated its hundredth anniversary .
[PER Noah Goldberg] wrote a biography of [PER Marie Curie] .
Wildfires burned thousands of hectares in [LOC California] .
[ORG Vantage Capital] invested in three start-ups from [LOC Tallinn] .
The [MISC Nobel Prize] in chemistry went to two women this year .
[PER Sofia Lindqvist] skated to victory in [LOC Oslo] .
[LOC Mexico City] hosted the conference for the first time .
[PER Ravi Shankar] played the sitar at the [MISC Edinburgh Festival] .
[ORG Brightwater Pharmaceuticals] began trials of a new vaccine .
The bus from [LOC Quito] climbs through the clouds for hours .
[PER Yusuf Demir] captained [ORG Ankara Spor] to the league title .
Snow fell on [LOC Madrid] for the first time in a decade .
The [MISC Irish] government approved the budget on Wednesday .
[PER Hannah Weber] runs a bookshop near the [LOC Elbe] in [LOC Dresden] .
[ORG Cobalt Games] delayed the release of [MISC Starfall Legends] until autumn .
Two climbers reached the summit of [LOC K2] without oxygen .
[PER Mateo Silva] studied law at the [ORG University of Buenos Aires] .
The council will vote on the new parking rules tomorrow .
[ORG Harrowgate Steel] cut two hundred jobs in [LOC Sheffield] .
The [MISC Olympic] torch passed through [LOC Athens] at dawn .
[PER Zainab Hassan] won the election in the northern district .
[ORG Alder Biotech] moved its headquarters from [LOC Boston] to [LOC Dublin] .
The [LOC Mekong] floods every year during the monsoon .
[PER Felix Braun] invented a cheaper water filter .
[ORG Westbrook College] won the rowing race against [ORG Eastmoor College] .
Shares in [ORG Pinecrest Retail] jumped ten percent on Thursday .
[PER Leila Karimi] directed the film , which is in [MISC Persian] .
The storm moved north towards [LOC Iceland] .
Visitors to [LOC Petra] must walk through a narrow canyon .
[PER George Whitfield] , a retired judge , died at the age of 92 .
[ORG Silverline Rail] will run extra trains during the [MISC Christmas] holidays .
The children planted trees along the river bank .
[PER Anya Volkova] beat [PER Clara Jensen] in straight sets .
[ORG Halcyon Studios] bought the rights to the comic .
The [MISC Spanish Armada] sailed in 1588 .
[LOC Bangkok] is sinking by about two centimetres a year .
[PER Oliver Grant] plays in goal for [ORG Northfield United] .
The [MISC Apollo 11] crew landed on the Moon in 1969 .
[ORG Tokyo Institute of Technology] built a robot that can fold laundry .
Water levels in [LOC Lake Victoria] have risen again .
[PER Beatriz Costa] moved from [LOC Porto] to [LOC Toronto] in 2015 .
[ORG Granite Mobile] will raise prices in [LOC Scotland] next year .
A new species of frog was found in the forests of [LOC Borneo] .
[PER Kenji Mori] designed the stadium for [ORG Osaka Blue Wave] .
The [MISC Brexit] negotiations lasted more than three years .
The talks ended without agreement late on Saturday .
[PER Priya Nair] leads the genetics lab at [ORG Bangalore Science Institute] .
The [LOC Nile] flows through eleven countries .
[ORG Lumen Optics] makes lenses for telescopes and cameras .
[PER Walter Brooks] won the [MISC Boston Marathon] at the age of 40 .
The [MISC Swiss] bank denied the allegations .
[PER Emeka Obi] sold his company to [ORG Fintrek] for an undisclosed sum .
[LOC Reykjavik] is the northernmost capital in the world .
[ORG Marlow Hockey Club] signed a goalkeeper from [LOC Finland] .
[PER Jia Li] presented her findings at the [MISC Asian Physics Forum] .
The old castle in [LOC Edinburgh] sits on an extinct volcano .
[ORG Crescent Energy] opened a wind farm off the coast of [LOC Denmark] .
Many workers walked out in protest over pay .
[PER Catherine Dubois] was the first woman to lead [ORG Banque du Nord] .
The [MISC Great Fire of London] destroyed much of the city in 1666 .
[PER Ahmed Saleh] drove across the [LOC Atlas Mountains] in a small van .
[ORG Evergreen Academy] won the national debate competition .
Sales of the [MISC Nimbus 3000] vacuum cleaner doubled in [LOC Germany] .
[PER Roberto Bianchi] cooked dinner for the [MISC Italian] ambassador .
The glacier near [LOC Zermatt] has lost a third of its ice .
[ORG Wildcat Basketball] lost at home to [ORG Desert Suns] .
The [MISC Korean War] ended in an armistice in 1953 .
[PER Ines Moreau] wrote the software that runs the traffic lights in [LOC Marseille] .
[ORG Summit Outdoor] recalled thousands of faulty tents .
[PER Abebe Tesfaye] grew up in [LOC Addis Ababa] and studied in [LOC Moscow] .
It was the warmest winter on record .
[ORG Maple Leaf Cycling] held its annual race around [LOC Lake Ontario] .
[PER Hyun-woo Park] designed the logo for the [MISC Seoul Games] .
The [LOC Andes] stretch for about seven thousand kilometres .
[PER Margaret Ellis] left [ORG Ellis & Ward] to start her own law firm .
After a delay caused by strikes , the cargo ship finally left [LOC Rotterdam] for [LOC Singapore] on Tuesday evening with a full load .
When the [MISC Spring Book Fair] opened , the stall run by [ORG Quill Press] was crowded with readers waiting to meet [PER Tove Andersen] .
"""

DEV = """
[PER Lucas Moretti] opened a pizza shop in [LOC Naples] last year .
[ORG Starling Airways] added direct flights to [LOC Lima] .
The [MISC Commonwealth Games] were held in [LOC Glasgow] in 2014 .
[PER Nadia Haddad] won a silver medal in fencing .
The [LOC Volga] freezes over for several months each winter .
[ORG Ridgeway University] received a large gift from a former student .
The meeting was postponed until further notice .
[PER Bjorn Halvorsen] skied across [LOC Greenland] alone .
[ORG Thornbury Town] sacked its manager after five defeats .
[PER Sunita Rao] wrote the song in [MISC Hindi] and [MISC Tamil] .
Fishermen in [LOC Galway] complained about the new quotas .
[ORG Arcadia Software] hired [PER Daniel Kaplan] as head of research .
The [MISC Cold War] shaped politics for almost fifty years .
[PER Esther Nkemelu] coached [ORG Enugu Stars] to their first trophy .
A heatwave hit [LOC Athens] and [LOC Istanbul] in July .
[ORG Northstar Mining] found copper in the hills of [LOC Zambia] .
The [MISC Portuguese] explorer reached [LOC India] by sea .
[PER Franz Keller] repaired clocks in a small shop in [LOC Salzburg] .
The crowd cheered as the runners crossed the line .
[ORG Harborview Hospital] opened a new children 's ward .
[PER Mei Lin] released her third album , sung in [MISC Cantonese] .
Flooding closed the airport in [LOC Dhaka] for two days .
[ORG Oakridge Cricket Club] beat [ORG Pembury] by six wickets .
The [MISC Aurora 5] tablet was praised for its battery life .
[PER Pierre Lefebvre] lectures in mathematics at the [ORG University of Lille] .
Traffic on the [LOC Bosphorus] bridge was heavy all morning .
[PER Yara Santos] and [PER Tiago Lima] won the mixed doubles .
[ORG Copperfield Brewing] sold its pubs to a rival chain .
The exhibition showed paintings from the [MISC Dutch Golden Age] .
Snowstorms cut power to thousands of homes .
[PER Oskar Nilsson] rowed from [LOC Stockholm] to [LOC Helsinki] for charity .
[ORG Vireo Health] agreed to pay a fine to regulators .
The [LOC Pyrenees] form a natural border between two countries .
[PER Ayesha Siddiqui] became the youngest member of parliament .
[ORG Blackwood Rangers] drew 2-2 with [ORG Millbrook] on Saturday .
The [MISC Egyptian] pyramids attract millions of tourists .
[PER Henrik Dahl] built a cabin by the lake with his own hands .
[ORG Ashford Polytechnic] will teach courses in [MISC Welsh] from next year .
The village lies at the foot of [LOC Mount Kenya] .
[PER Carmen Vidal] directed the new production of the opera in [LOC Barcelona] .
Prices at the market doubled within a month .
[ORG Zenith Motors] unveiled the [MISC Zenith Volt] electric car .
The [MISC Hundred Years' War] lasted for 116 years .
[PER Obinna Eze] runs a farm outside [LOC Abuja] .
Ice on the [LOC St Lawrence River] delayed shipping .
[ORG Lakeshore Bank] closed twelve branches in rural areas .
[PER Marek Novak] was named coach of the [MISC Czech] national team .
The [ORG Vienna Philharmonic] played to a full hall .
[PER Leah Cohen] studied marine biology in [LOC Haifa] .
The results will be announced on Friday .
Despite losing their captain to injury in the first half , [ORG Dunmore Albion] held on for a draw in front of a sold-out crowd .
"""

TEST = """
[PER Anton Sorensen] became the head chef at a restaurant in [LOC Copenhagen] .
[ORG Cloudberry Systems] laid off a fifth of its staff .
The [MISC Rugby World Cup] opened with a match in [LOC Auckland] .
[PER Gabriela Mendes] swam across the [LOC Strait of Gibraltar] .
The [LOC Ganges] is sacred to millions of people .
[ORG Ashgrove University] launched an online course in astronomy .
Rain stopped play for most of the afternoon .
[PER Dmitri Volkov] won the chess tournament in [LOC Kazan] .
[ORG Foxhall Athletic] signed a striker from [ORG Porto Azul] .
[PER Keiko Sato] teaches [MISC Japanese] to adults in [LOC Vancouver] .
A bridge collapsed over the [LOC Tagus] during the storm .
[ORG Silverfin Capital] bought a stake in [ORG Redpine Media] .
The [MISC Industrial Revolution] began in [LOC Britain] .
[PER Chidi Okonkwo] scored the winning goal in extra time .
Smoke from the fires drifted over [LOC Sydney] and [LOC Melbourne] .
[ORG Granada Textiles] moved production to [LOC Morocco] .
The [MISC Mexican] singer performed at the [MISC Montreux Jazz Festival] .
[PER Heinrich Vogel] restored the organ in the cathedral of [LOC Cologne] .
The shops close early on Sundays .
[ORG Crestview Clinic] treated hundreds of patients after the crash .
[PER Layla Mansour] published a cookbook of [MISC Lebanese] recipes .
The road to [LOC Ushuaia] was blocked by snow .
[ORG Kingsbridge Hockey Club] won the cup for the third time .
The [MISC Orion Pro] laptop weighs less than a kilogram .
[PER Jean-Marc Girard] teaches philosophy at the [ORG Sorbonne] .
Fog over the [LOC English Channel] delayed the ferries .
[PER Ana Pereira] and [PER Rui Gomes] opened a surf school in [LOC Ericeira] .
[ORG Hollowbrook Farms] supplies milk to supermarkets across [LOC Wales] .
The museum holds letters from the [MISC French Revolution] .
The lights went out across the whole street .
[PER Sven Lund] cycled from [LOC Bergen] to [LOC Rome] in a month .
[ORG Apex Logistics] opened a warehouse near the port .
The [LOC Himalayas] contain the highest peaks on Earth .
[PER Farah Qureshi] was appointed ambassador to [LOC Indonesia] .
[ORG Stonebridge Wanderers] lost 4-0 to [ORG Castlefield] .
The [MISC Greek] ferry company raised its fares .
[PER Tobias Richter] carved wooden toys in a village near [LOC Munich] .
[ORG Glenmore College] added a degree in [MISC Gaelic] .
Hikers reached the top of [LOC Kilimanjaro] at sunrise .
[PER Valentina Cruz] sang the lead role at the opera house in [LOC Bogota] .
The bill passed by a single vote .
[ORG Torrent Cars] recalled the [MISC Torrent Swift] over a brake fault .
The [MISC Thirty Years' War] devastated much of central Europe .
[PER Chinedu Nwosu] sells fruit at a market in [LOC Port Harcourt] .
The [LOC Mississippi River] rose above flood level in spring .
[ORG Bayside Credit Union] lowered its interest rates .
[PER Pavel Horak] was chosen to lead the [MISC Slovak] Olympic team .
The [ORG London Symphony Orchestra] toured four continents .
[PER Rachel Stein] researched coral reefs near [LOC Eilat] .
Nobody was hurt in the accident .
The committee said that the new bridge across the [LOC Zambezi] would cut the journey between the two towns from three hours to forty minutes .
"""

TYPES = ("PER", "LOC", "ORG", "MISC")
ENTITY = re.compile(r"\[(PER|LOC|ORG|MISC) ([^\]]+)\]")


def tag_sentence(line):
    """Turn one annotated line into a list of (word, tag) pairs."""
    pairs, pos = [], 0
    for m in ENTITY.finditer(line):
        for w in line[pos:m.start()].split():
            pairs.append((w, "O"))
        for i, w in enumerate(m.group(2).split()):
            pairs.append((w, ("B-" if i == 0 else "I-") + m.group(1)))
        pos = m.end()
    for w in line[pos:].split():
        pairs.append((w, "O"))
    for w, _ in pairs:
        assert "[" not in w and "]" not in w, line
    return pairs


def sentences(block):
    return [tag_sentence(l) for l in block.strip().splitlines() if l.strip()]


def write(path, sents):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n\n".join("\n".join(f"{w} {t}" for w, t in s) for s in sents))
        f.write("\n")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    splits = {"train": TRAIN, "dev": DEV, "test": TEST}
    seen = set()
    for name, block in splits.items():
        sents = sentences(block)
        for s in sents:
            key = " ".join(w for w, _ in s)
            assert key not in seen, f"duplicate sentence: {key}"
            seen.add(key)
        write(os.path.join(here, f"{name}.conll"), sents)
        print(f"{name}: {len(sents)} sentences")


if __name__ == "__main__":
    main()
